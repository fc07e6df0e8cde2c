package main

import (
	"strings"
	"testing"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// TestRunShareFlags: run submit takes a run's weight, cap and priority,
// and refuses, in one line and writing nothing, those no run can have; run
// status and summary show what the run asked and holds.
func TestRunShareFlags(t *testing.T) {
	t.Parallel()
	// A Redis of its own: its evals reach Asynq's queue, which TestBadInput
	// wants empty on the shared one.
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	suite := writeSuite(t, `{}`, `{}`)
	for _, bad := range [][]string{
		{"--weight", "0"}, {"--weight", "1001"}, {"--max-executors", "-1"}, {"--priority", "urgent"}, {"--priority", ""},
	} {
		r := cli(append([]string{"run", "submit", "--file", suite, "--name", "bad", "--allow-empty-pool"}, bad...)...)
		if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("run submit %v: %+v; want one line, exit 2", bad, r)
		}
	}
	if r := cli("run", "status", "bad"); r.code == 0 {
		t.Fatalf("a refused submit wrote its run: %+v", r)
	}
	if r := cli("run", "submit", "--file", suite, "--name", "shared", "--allow-empty-pool", "--weight", "3", "--max-executors", "2", "--priority", "high"); r.code != 0 {
		t.Fatalf("run submit: %+v", r)
	}
	r := cli("run", "status", "shared")
	if r.code != 0 || !strings.Contains(r.stdout, "share: weight 3, at most 2 executors, priority high; 0 executors held now, 0.0 on average over the last minute; 2 evals in flight, 0 waiting for admission") {
		t.Fatalf("run status: %+v", r)
	}
	if r := cli("run", "summary", "shared"); r.code != 0 || !strings.Contains(r.stdout, "share weight 3, at most 2 executors (0: no cap), priority high") {
		t.Fatalf("run summary: %+v", r)
	}
}
