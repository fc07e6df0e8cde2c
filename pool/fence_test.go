package pool

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// RaiseFence only raises the pool's fence counter, to a fence no further
// ahead of Redis's clock than MaxFenceAhead, and the next grant is above
// it. A fence past the bound, or not positive, changes nothing.
func TestRaiseFence(t *testing.T) {
	t.Parallel()
	now := time.Now().UnixMilli()
	ahead := now + (MaxFenceAhead - time.Minute).Milliseconds()
	tests := []struct {
		name    string
		fences  []int64 // raised in turn
		raised  []bool
		wantErr error
		next    int64 // the next grant's fence is at least this
	}{
		{"a day ahead, less a minute", []int64{ahead}, []bool{true}, nil, ahead + 1},
		{"only raises", []int64{ahead, ahead - 1000, ahead}, []bool{true, false, false}, nil, ahead + 1},
		{"below the clock floor", []int64{5}, []bool{true}, nil, now},
		{"the attacker's", []int64{9000000000000000000}, []bool{false}, ErrInvalid, now},
		{"past the bound", []int64{now + (MaxFenceAhead + time.Minute).Milliseconds()}, []bool{false}, ErrInvalid, now},
		{"zero", []int64{0}, []bool{false}, ErrInvalid, now},
		{"negative", []int64{-1}, []bool{false}, ErrInvalid, now},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, "http://e1")
			for i, f := range tt.fences {
				raised, err := p.RaiseFence(t.Context(), f)
				if raised != tt.raised[i] || !errors.Is(err, tt.wantErr) {
					t.Fatalf("RaiseFence(%d) = %v, %v; want %v, %v", f, raised, err, tt.raised[i], tt.wantErr)
				}
			}
			if tt.wantErr != nil {
				if n, err := b.client.Exists(t.Context(), p.keys.Fence()).Result(); err != nil || n != 0 {
					t.Fatalf("a refused raise wrote the fence: %d, %v", n, err)
				}
			}
			l, err := p.Acquire(t.Context(), "e", time.Minute)
			if err != nil || l.Fence < tt.next {
				t.Fatalf("next grant: %+v, %v; want a fence of at least %d", l, err, tt.next)
			}
		})
	}
	t.Run("foreign data", func(t *testing.T) {
		t.Parallel()
		p, b := setup(t)
		if err := b.client.Set(t.Context(), p.keys.Fence(), "not a number", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.RaiseFence(t.Context(), now); !errors.Is(err, ErrForeignData) {
			t.Fatalf("RaiseFence over foreign data = %v, want ErrForeignData", err)
		}
		if got := checkLines(t, p); len(got) != 1 || !strings.Contains(got[0], `holds "not a number", not an integer`) {
			t.Fatalf("Check over foreign data = %q, want the fence reported", got)
		}
	})
}
