package main

import (
	"strings"
	"testing"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// Finding 8 of issue 22: a --timeout that is not whole seconds is refused
// in one line, as usage, before anything is enqueued.
func TestTimeoutIsWholeSeconds(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	suite := writeSuite(t, `{}`)
	tests := []struct {
		name string
		args []string
	}{
		{"enqueue", []string{"enqueue", "--spec", "{}", "--allow-empty-pool", "--timeout", "1500ms"}},
		{"enqueue with milliseconds", []string{"enqueue", "--spec", "{}", "--allow-empty-pool", "--timeout", "2s1ms"}},
		{"run submit", []string{"run", "submit", "--file", suite, "--allow-empty-pool", "--timeout", "1500ms"}},
	}
	for _, tt := range tests {
		r := evalpool(t, srv.URL(), "default", tt.args...)
		if r.code != 2 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "whole seconds") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2, one line saying whole seconds, nothing enqueued", tt.name, r.code, r.stdout, r.stderr)
		}
	}
}
