package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
)

// Bounds of Backoff's pause, its defaults.
const (
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 5 * time.Second
)

// Backoff rides out a Redis that fails a waiting client for a while (a
// restart, a failover, a blip the workers survive): Do calls a call again
// while it fails with a Transient error, pausing Min, then twice as long
// each time up to Max, until it succeeds or its context ends. It keeps its
// state between calls, so that an outage is told once (Failing) however
// many calls it fails, and its end once (Back). A nil *Backoff makes each
// call once. Not safe for concurrent use.
type Backoff struct {
	// Min is the first pause. Defaults to DefaultBackoffMin (100 ms).
	Min time.Duration
	// Max bounds the pause. Defaults to DefaultBackoffMax (5 s).
	Max time.Duration
	// Failing is called when calls begin to fail, with the first error.
	// May be nil.
	Failing func(err error)
	// Back is called when a call succeeds again, with how long calls
	// failed. May be nil.
	Back func(down time.Duration)

	since time.Time // the first failure of the outage; zero when none
}

// Do calls f, again while it fails with a Transient error, until it
// succeeds, fails otherwise, or ctx ends: then it returns ctx's cause
// with f's last error.
func (b *Backoff) Do(ctx context.Context, f func() error) error {
	if b == nil {
		return f()
	}
	pause := cmp.Or(b.Min, DefaultBackoffMin)
	for {
		err := f()
		switch {
		case err == nil:
			if !b.since.IsZero() && b.Back != nil {
				b.Back(time.Since(b.since))
			}
			b.since = time.Time{}
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("%w: %w", context.Cause(ctx), err)
		case !Transient(err):
			return err
		case b.since.IsZero():
			b.since = time.Now()
			if b.Failing != nil {
				b.Failing(err)
			}
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %w", context.Cause(ctx), err)
		case <-t.C:
		}
		pause = min(2*pause, cmp.Or(b.Max, DefaultBackoffMax))
	}
}

// Transient reports whether err is Redis failing to answer, not an answer:
// a connection refused, reset or timed out, a Redis still loading its data,
// a replica not yet promoted, a cluster or Sentinel between masters, no
// connection free. The same call may succeed later; a refused password, a
// missing key or foreign data will not.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, redis.ErrPoolTimeout) || redis.IsLoadingError(err) || redis.IsReadOnlyError(err) ||
		redis.IsClusterDownError(err) || redis.IsTryAgainError(err) || redis.IsMasterDownError(err) ||
		redis.IsMaxClientsError(err)
}
