package main

import (
	"encoding/json"
	neturl "net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
)

// Finding 6 of issue 22: an eval can be seen whole. `eval status` shows a
// graded failure as failed, with its reason; `eval show` (and GET
// /api/v1/evals/{id}, alike) gives its spec and its attempts: executor,
// times, outcome, exit code, output and the ends of its stdout and stderr;
// for a plain eval from its task, for a run's from its run's record.
func TestSeeingAnEval(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	once := filepath.Join(t.TempDir(), "crashed-once")
	grader := evaltest.Grader(t, `spec=$(cat)
case "$spec" in
*flaky*)
	if [ ! -e `+once+` ]; then
		touch `+once+`
		echo 'flaked' >&2
		exit 4
	fi ;;
*crash*)
	echo 'Traceback (most recent call last):' >&2
	echo "ValueError: cannot grade $spec" >&2
	exit 3 ;;
*wrong*)
	echo 'thinking hard' >&2
	echo '{"status":"failed","score":0,"output":{"got":41,"want":42}}'
	exit 0 ;;
esac
echo 'all good'
echo '{"status":"passed","score":1,"output":{"got":42}}'
`)
	_, urls := startExecutors(t, 2, refexec.Options{Exec: grader})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--poll-interval", "20ms")
	const token = "seeing-token-0123456789abcdef"
	_, base, _ := dashboardCLI(t, url, "--listen", "127.0.0.1:0", "--auth-token", token)

	plain := filepath.Join(t.TempDir(), "evals.jsonl")
	lines := `{"eval_id":"ok","spec":{"q":"fine"}}
{"eval_id":"bad","spec":{"q":"wrong"}}
{"eval_id":"boom","spec":{"q":"crash"}}
{"eval_id":"flaky","spec":{"q":"flaky"}}
`
	if err := os.WriteFile(plain, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := cli("enqueue", "--file", plain, "--max-retry", "1", "--wait"); r.code != 1 {
		t.Fatalf("enqueue --wait: %+v; want exit 1", r)
	}
	if r := cli("run", "submit", "--name", "r", "--file", writeSuite(t, `{"q":"wrong"}`), "--wait"); r.code != 1 {
		t.Fatalf("run submit --wait: %+v; want exit 1", r)
	}

	r := cli("eval", "status", "ok", "bad", "boom")
	for _, want := range []string{
		`bad   failed   0 output {"got":41,"want":42}`,
		"boom  errored  1 exit status 3",
		"ValueError: cannot grade",
	} {
		if !strings.Contains(strings.Join(strings.Fields(r.stdout), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("eval status lacks %q:\n%s", want, r.stdout)
		}
	}

	show := func(id string) client.Detail {
		t.Helper()
		r := cli("eval", "show", id, "--json")
		var d client.Detail
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &d) != nil {
			t.Fatalf("eval show %s --json: %+v", id, r)
		}
		return d
	}
	tests := []struct {
		id, outcome, spec string
		attempts          int
		exitCode          int // of the final attempt; 0 for none
		output, stdout    string
		stderr            string
	}{
		{"ok", "passed", `{"q":"fine"}`, 1, 0, `{"got":42}`, "all good", ""},
		{"bad", "failed", `{"q":"wrong"}`, 1, 0, `{"got":41,"want":42}`, "", "thinking hard"},
		{"boom", "errored", `{"q":"crash"}`, 1, 3, "", "", "ValueError: cannot grade"},
		{"flaky", "passed", `{"q":"flaky"}`, 2, 0, `{"got":42}`, "all good", ""},
		{"r/k1", "failed", `{"q":"wrong"}`, 1, 0, `{"got":41,"want":42}`, "", "thinking hard"},
	}
	for _, tt := range tests {
		if t.Failed() {
			break
		}
		d := show(tt.id)
		if d.Outcome != tt.outcome || compactJSON(d.Spec) != tt.spec || len(d.Attempts) != tt.attempts {
			t.Errorf("eval show %s: outcome %q, spec %s, %d attempts; want %s, %s, %d", tt.id, d.Outcome, d.Spec, len(d.Attempts), tt.outcome, tt.spec, tt.attempts)
			continue
		}
		if first := d.Attempts[0]; tt.attempts == 2 && (first.Attempt != 0 || first.Outcome != client.AttemptRetried || !strings.Contains(first.Error, "exit status 4") || first.Ended == nil) {
			t.Errorf("eval show %s: first attempt %+v; want attempt 0, retried, its error and time", tt.id, first)
		}
		a := d.Attempts[len(d.Attempts)-1]
		exit := 0
		if a.ExitCode != nil {
			exit = *a.ExitCode
		}
		if a.Executor == "" || a.Started == nil || a.Ended == nil || a.Outcome != tt.outcome || exit != tt.exitCode ||
			compactJSON(a.Output) != tt.output || !strings.Contains(a.Stdout, tt.stdout) || !strings.Contains(a.Stderr, tt.stderr) {
			t.Errorf("eval show %s: final attempt %+v", tt.id, a)
		}
		code, body := httpDo(t, "GET", base+"/api/v1/evals/"+neturl.PathEscape(tt.id), "", "Authorization", "Bearer "+token)
		var api, shown any
		cliJSON := cli("eval", "show", tt.id, "--json").stdout
		if code != 200 || json.Unmarshal([]byte(body), &api) != nil || json.Unmarshal([]byte(cliJSON), &shown) != nil || !reflect.DeepEqual(api, shown) {
			t.Errorf("GET /api/v1/evals/%s: %d %s; want what eval show --json says: %s", tt.id, code, body, cliJSON)
		}
	}
	if r := cli("eval", "show", "boom"); r.code != 0 || !strings.Contains(r.stdout, `spec {"q":"crash"}`) || !strings.Contains(r.stdout, "1 retries of at most 1") || !strings.Contains(r.stdout, "exit code 3") || !strings.Contains(r.stdout, "ValueError: cannot grade") {
		t.Errorf("eval show boom: %+v", r)
	}
}
