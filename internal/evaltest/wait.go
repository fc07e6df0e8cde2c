package evaltest

import (
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
