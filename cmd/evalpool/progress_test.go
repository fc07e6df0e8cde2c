package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
)

// Finding 8 of issue 22: a wait whose stderr is no terminal (a CI log)
// writes plain lines of progress, never a progress bar's \r frames.
func TestProgressInANonTerminalIsLines(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	_, urls := startExecutors(t, 2, refexec.Options{Latency: time.Millisecond})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--poll-interval", "20ms")
	file := filepath.Join(t.TempDir(), "evals.jsonl")
	if err := os.WriteFile(file, []byte(`{"spec":{}}`+"\n"+`{"spec":{}}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string // the last progress line
	}{
		{"enqueue --wait", []string{"enqueue", "--file", file, "--wait"}, "evals: 2 of 2 ended"},
		{"run submit --wait", []string{"run", "submit", "--name", "lines", "--file", writeSuite(t, `{}`, `{}`, `{}`), "--wait"}, "lines: 3 of 3 ended"},
	}
	for _, tt := range tests {
		r := cli(tt.args...)
		if r.code != 0 || strings.Contains(r.stderr, "\r") || !strings.Contains(r.stderr, tt.want+"\n") {
			t.Errorf("%s: exit %d, stderr %q; want lines of progress ending %q, no \\r", tt.name, r.code, r.stderr, tt.want)
		}
	}
}
