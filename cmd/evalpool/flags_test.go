package main

import (
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	evalrun "github.com/evalpool/evalpool/run"
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
		r := runCLI(t, srv.URL(), "default", tt.args...)
		if r.code != 2 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "whole seconds") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2, one line saying whole seconds, nothing enqueued", tt.name, r.code, r.stdout, r.stderr)
		}
	}
}

// Finding 8 of issue 22: `run summary --help` says what --min-pass-rate
// does, and it does that: no gate without the flag, a gate with it.
func TestRunSummaryMinPassRateHelpAgrees(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartT(t, evaltest.Options{})
	help := runCLI(t, srv.URL(), "default", "run", "summary", "--help")
	var line string
	for _, l := range strings.Split(help.stdout, "\n") {
		if strings.Contains(l, "--min-pass-rate") {
			line = l
		}
	}
	if strings.Contains(line, "(default") || !strings.Contains(line, "no gate without it") {
		t.Errorf("run summary --help: %q; want no default, and that without the flag nothing is gated", line)
	}
	store := evalrun.NewStore(srv.Client(t), evalrun.Options{})
	if err := store.Create(t.Context(), evalrun.Run{Name: "gated", Pool: "default", CreatedAt: time.Now(), Keys: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	for _, rec := range []evalrun.Record{{Key: "a", Status: evalrun.Passed}, {Key: "b", Status: evalrun.Failed}} {
		if _, err := store.Finish(t.Context(), "gated", rec); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		args []string
		code int
	}{
		{nil, 0},
		{[]string{"--min-pass-rate", "0.5"}, 0},
		{[]string{"--min-pass-rate", "1"}, 1},
		{[]string{"--min-pass-rate", "1.5"}, 2},
	}
	for _, tt := range tests {
		r := runCLI(t, srv.URL(), "default", append([]string{"run", "summary", "gated"}, tt.args...)...)
		if r.code != tt.code {
			t.Errorf("run summary %v: exit %d, want %d: %s", tt.args, r.code, tt.code, r.stderr)
		}
	}
}
