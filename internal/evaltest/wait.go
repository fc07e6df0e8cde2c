package evaltest

import (
	"context"
	"testing"
	"time"
)

// Eventually polls cond every few milliseconds until it holds, and fails the
// test with msg if it does not within timeout. It stands in for sleeps: a
// test waits exactly as long as the condition takes.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Run runs run (a worker's Run, a server's) in the background until the
// test ends, then stops it and fails the test if it returned an error.
func Run(t testing.TB, name string, run func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	})
}
