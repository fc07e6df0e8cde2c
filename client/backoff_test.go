package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/redisconn"
	"github.com/evalpool/evalpool/run"
)

var refused = fmt.Errorf("eval e: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED})

func TestTransient(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"none", nil, false},
		{"refused", refused, true},
		{"refused, named by redisconn", fmt.Errorf("%w redis://h/0: %w", redisconn.ErrConnect, refused), true},
		{"no connection free", fmt.Errorf("x: %w", redis.ErrPoolTimeout), true},
		{"wrong password", fmt.Errorf("%w redis://h/0: %w", redisconn.ErrConnect, errors.New("WRONGPASS invalid username-password pair")), false},
		{"not found", run.ErrNotFound, false},
		{"cancelled", fmt.Errorf("%w: %w", context.Canceled, refused), false},
	} {
		if got := client.Transient(tc.err); got != tc.want {
			t.Errorf("%s: Transient(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// Backoff tries a transient failure again, pausing longer each time up to
// its Max, says once that calls fail and once that they are back, across
// calls; any other error ends the call at once, and so does the context.
func TestBackoff(t *testing.T) {
	t.Parallel()
	var failing, back int
	b := &client.Backoff{Min: time.Millisecond, Max: 4 * time.Millisecond,
		Failing: func(error) { failing++ }, Back: func(time.Duration) { back++ }}
	fails := func(n int, then error) func() error {
		return func() error {
			if n--; n >= 0 {
				return refused
			}
			return then
		}
	}
	start := time.Now()
	if err := b.Do(t.Context(), fails(5, nil)); err != nil {
		t.Fatal(err)
	}
	// 1 + 2 + 4 + 4 + 4 ms at least.
	if took := time.Since(start); took < 15*time.Millisecond || failing != 1 || back != 1 {
		t.Fatalf("5 failures took %s, told %d and %d times; want 15 ms at least, once each", took, failing, back)
	}
	if err := b.Do(t.Context(), fails(2, run.ErrNotFound)); !errors.Is(err, run.ErrNotFound) || failing != 2 || back != 1 {
		t.Fatalf("a transient failure, then another error: %v (told %d, %d)", err, failing, back)
	}
	// The outage goes on into the next call: told once.
	if err := b.Do(t.Context(), fails(1, nil)); err != nil || failing != 2 || back != 2 {
		t.Fatalf("the outage's next call: %v (told %d, %d)", err, failing, back)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := b.Do(ctx, fails(1<<30, nil)); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("a Redis down past the context: %v; want the context's cause and the last error", err)
	}
	var none *client.Backoff
	if err := none.Do(t.Context(), fails(1, nil)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("a nil Backoff: %v; want the first error", err)
	}
}
