package evaltest

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Grader writes script, a shell script, to an executable file of the
// test's own and returns its path: an --exec command for a reference
// executor.
func Grader(t testing.TB, script string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "grade.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// Until polls cond every few milliseconds until it holds or timeout
// passes, and reports whether it held: Eventually for a test that says
// itself what it saw when the condition never came.
func Until(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
