package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// enqueue measures a spec as the worker will: 400 KiB of '<' (2.4 MiB in
// its task), by --spec or in a --file, is refused in one line with nothing
// enqueued; a spec of just the limit in its task is enqueued and run.
func TestEnqueueMeasuresSpecsAsTheWorkerDoes(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	angles := `"` + strings.Repeat("<", 400<<10) + `"`
	file := filepath.Join(t.TempDir(), "evals.jsonl")
	if err := os.WriteFile(file, []byte(`{"spec":{}}`+"\n"+`{"spec":`+angles+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--spec", angles}, {"--file", file}} {
		r := cli(append([]string{"enqueue"}, args...)...)
		if r.code != exitError || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "spec is 2457602 bytes as its task carries it") {
			t.Fatalf("enqueue %s 400 KiB of '<': exit %d, stdout %.100q, stderr %.300q; want exit %d and one line saying the spec is 2457602 bytes", args[0], r.code, r.stdout, r.stderr, exitError)
		}
	}
	if keys := asynqKeys(t, url); len(keys) != 0 {
		t.Fatalf("a refused spec left Asynq keys: %v", keys)
	}

	_, urls := startExecutors(t, 1, refexec.Options{})
	if r := cli("pool", "add", urls[0]); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--poll-interval", "20ms")
	k := (tasks.MaxSpecBytes - 2) / 6
	atLimit := `"` + strings.Repeat("<", k) + strings.Repeat("x", tasks.MaxSpecBytes-2-6*k) + `"`
	if r := cli("enqueue", "--spec", atLimit, "--max-retry", "0", "--timeout", "30s", "--wait"); r.code != 0 {
		t.Fatalf("enqueue --wait of a spec of %d bytes in its task: exit %d, stderr %.300q", tasks.MaxSpecBytes, r.code, r.stderr)
	}
}
