package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	evalrun "github.com/evalpool/evalpool/run"
)

// Finding 7 of issue 22: what a grader measures, what an eval is part of
// and what a run is of reach every record. A grader's named metrics, a
// suite line's group, --epochs' repeats and --meta are in the run's
// results, its summary and `eval show`; a grader whose metrics are not
// ones errs its eval, saying why.
func TestMetricsGroupsEpochsAndMeta(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	grader := evaltest.Grader(t, `spec=$(cat)
case "$spec" in
*badmetric*) echo '{"status":"passed","score":1,"metrics":{"no spaces":1}}' ;;
*hard*) echo '{"status":"failed","score":0.25,"metrics":{"accuracy":0,"f1":0.5}}' ;;
*) echo '{"status":"passed","score":1,"metrics":{"accuracy":1,"f1":0.75}}' ;;
esac
`)
	_, urls := startExecutors(t, 2, refexec.Options{Exec: grader})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--poll-interval", "20ms")
	suite := filepath.Join(t.TempDir(), "suite.jsonl")
	lines := `{"eval_id":"easy","spec":{"q":"easy"},"group":"math"}
{"eval_id":"hard","spec":{"q":"hard"},"group":"code"}
{"eval_id":"odd","spec":{"q":"badmetric"}}
`
	if err := os.WriteFile(suite, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	r := cli("run", "submit", "--name", "measured", "--file", suite, "--epochs", "2", "--meta", "model=m1", "--meta", "commit=abc123", "--max-retry", "0", "--wait", "--min-pass-rate", "0")
	if r.code != 0 {
		t.Fatalf("run submit: %+v", r)
	}

	r = cli("run", "results", "measured")
	type line struct {
		Key     string             `json:"key"`
		Status  string             `json:"status"`
		Metrics map[string]float64 `json:"metrics"`
		Group   string             `json:"group"`
		Epoch   int                `json:"epoch"`
		Error   string             `json:"error"`
	}
	got := map[string]line{}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var rec line
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("run results: %v: %q", err, l)
		}
		got[rec.Key] = rec
	}
	want := map[string]line{
		"easy#1": {Key: "easy#1", Status: "passed", Metrics: map[string]float64{"accuracy": 1, "f1": 0.75}, Group: "math", Epoch: 1},
		"easy#2": {Key: "easy#2", Status: "passed", Metrics: map[string]float64{"accuracy": 1, "f1": 0.75}, Group: "math", Epoch: 2},
		"hard#1": {Key: "hard#1", Status: "failed", Metrics: map[string]float64{"accuracy": 0, "f1": 0.5}, Group: "code", Epoch: 1},
		"hard#2": {Key: "hard#2", Status: "failed", Metrics: map[string]float64{"accuracy": 0, "f1": 0.5}, Group: "code", Epoch: 2},
	}
	for key, w := range want {
		if !reflect.DeepEqual(got[key], w) {
			t.Errorf("run results: %s is %+v, want %+v", key, got[key], w)
		}
	}
	for _, key := range []string{"odd#1", "odd#2"} {
		if g := got[key]; g.Status != "errored" || !strings.Contains(g.Error, `metric name "no spaces"`) {
			t.Errorf("run results: %s is %+v; want errored, saying which metric name is not one", key, g)
		}
	}

	var sum evalrun.Summary
	if r := cli("run", "summary", "measured", "--json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &sum) != nil {
		t.Fatalf("run summary --json: %+v", r)
	}
	if sum.Size != 6 || sum.Epochs != 2 || !reflect.DeepEqual(sum.Meta, map[string]string{"model": "m1", "commit": "abc123"}) {
		t.Errorf("run summary: size %d, epochs %d, meta %v; want 6, 2 and the --meta given", sum.Size, sum.Epochs, sum.Meta)
	}

	r = cli("eval", "show", "measured/hard#2")
	for _, w := range []string{"run measured, key hard#2, epoch 2\n", "  group code\n", "    accuracy 0\n", "    f1 0.5\n"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("eval show lacks %q:\n%s", w, r.stdout)
		}
	}
}

// Bad metadata and epochs are usage errors: one line, nothing submitted.
func TestMetaAndEpochsAreChecked(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	suite := writeSuite(t, `{}`)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"meta without =", []string{"--meta", "model"}, `--meta "model": want key=value`},
		{"meta key twice", []string{"--meta", "a=1", "--meta", "a=2"}, "--meta a given twice"},
		{"meta bad key", []string{"--meta", "no space=1"}, `meta key "no space"`},
		{"meta control character", []string{"--meta", "note=a\nb"}, "no control character"},
		{"no epochs", []string{"--epochs", "0"}, "--epochs must be from 1 to 100, got 0"},
		{"too many epochs", []string{"--epochs", "101"}, "--epochs must be from 1 to 100, got 101"},
	} {
		r := runCLI(t, url, "default", append([]string{"run", "submit", "--allow-empty-pool", "--name", "checked", "--file", suite}, tt.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tt.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Errorf("%s: %+v; want exit 2 and one line holding %q", tt.name, r, tt.want)
		}
	}
	if r := runCLI(t, url, "default", "run", "list"); strings.Contains(r.stdout, "checked") {
		t.Errorf("a refused run was kept: %s", r.stdout)
	}
}
