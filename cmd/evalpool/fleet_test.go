package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/refexec"
)

// poolStatus reads `pool status --json`.
func poolStatus(t *testing.T, cli func(...string) result) pool.Status {
	t.Helper()
	r := cli("pool", "status", "--json")
	var st pool.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil {
		t.Fatalf("pool status --json: %+v (%v)", r, err)
	}
	return st
}

// executorIn finds one executor in a status.
func executorIn(st pool.Status, url string) (pool.ExecutorStatus, bool) {
	for _, e := range st.Executors {
		if e.URL == url {
			return e, true
		}
	}
	return pool.ExecutorStatus{}, false
}

// waitAll runs `eval wait` on ids within budget and returns its result.
func waitAll(t *testing.T, redisURL, poolName string, budget time.Duration, ids []string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), budget)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, append([]string{"--redis", redisURL, "--pool", poolName, "eval", "wait"}, ids...), &out, &errb)
	return result{code, out.String(), errb.String()}
}

// asynqKeys lists Asynq's keys in the Redis at redisURL.
func asynqKeys(t *testing.T, redisURL string) []string {
	t.Helper()
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	keys, err := c.Keys(t.Context(), "asynq:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// An executor SIGKILLed in the middle of a run costs at most
// --quarantine-after (+1) failed attempts, is quarantined within seconds,
// never fails an eval, and is back in service at its first probe after it
// comes back on its port.
func TestDeadExecutorIsQuarantined(t *testing.T) {
	t.Parallel()
	const (
		quarantineAfter = 3
		probeInterval   = 2 * time.Second
		reapInterval    = time.Second
		evals           = 300
	)
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }

	var execs []*proc
	var urls []string
	for i := range 3 {
		addr := evaltest.FreeAddr(t)
		execs = append(execs, startProc(t, fmt.Sprint("executor-", i), "executor", "--listen", addr, "--latency", "20ms"))
		urls = append(urls, "http://"+addr)
	}
	healthy := func(u string) bool { return (&executor.Client{}).Healthy(t.Context(), u) == nil }
	for _, u := range urls {
		evaltest.Eventually(t, 15*time.Second, "executor "+u+" never came up", func() bool { return healthy(u) })
	}
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	if r := cli("pool", "config", "--quarantine-after", strconv.Itoa(quarantineAfter), "--probe-interval", probeInterval.String()); r.code != 0 {
		t.Fatalf("pool config: %+v", r)
	}
	logs := startWorker(t, url, "--reap-interval", reapInterval.String(), "--retry-delay", "10ms", "--poll-interval", "20ms", "--concurrency", "8",
		"--metrics-addr", "127.0.0.1:0", "--per-executor-metrics")

	r := cli("enqueue", "--spec", `{}`, "--count", strconv.Itoa(evals), "--max-retry", "3", "--timeout", "30s")
	ids := strings.Fields(r.stdout)
	if r.code != 0 || len(ids) != evals {
		t.Fatalf("enqueue: exit %d, %d IDs; stderr %q", r.code, len(ids), r.stderr)
	}

	// Kill one executor once a fifth of the run is served: plenty is left
	// to run into it.
	dead, deadURL := execs[0], urls[0]
	evaltest.Eventually(t, 30*time.Second, "the run never got under way", func() bool {
		var served int64
		for _, u := range urls {
			st, err := executorStats(u)
			if err != nil {
				return false
			}
			served += st.Served
		}
		return served >= evals/5
	})
	// Its overlaps up to its death; those after its restart are read at the end.
	before, err := executorStats(deadURL)
	if err != nil {
		t.Fatal(err)
	}
	dead.signal(syscall.SIGKILL)
	killed := time.Now()

	evaltest.Eventually(t, 5*time.Second, "the dead executor was not quarantined within 5s of its death", func() bool {
		e, ok := executorIn(poolStatus(t, cli), deadURL)
		return ok && e.State == pool.StateQuarantined
	})
	t.Logf("quarantined %s after the kill", time.Since(killed).Round(time.Millisecond))
	st := poolStatus(t, cli)
	if e, _ := executorIn(st, deadURL); e.Quarantine == nil || e.Quarantine.Reason != pool.ReasonUnavailable || e.Fails < quarantineAfter {
		t.Fatalf("dead executor's status: %+v, quarantine %+v; want reason %q after %d fails", e, e.Quarantine, pool.ReasonUnavailable, quarantineAfter)
	}

	// Every eval completes, on the two others.
	r = waitAll(t, url, "default", 45*time.Second, ids)
	if r.code != 0 || !strings.Contains(r.stderr, fmt.Sprintf("%d evals: %d passed, 0 failed, 0 errored (archived)", evals, evals)) {
		t.Fatalf("eval wait: exit %d, want all %d passed and none archived: %s", r.code, evals, lastLines(r.stderr, 2))
	}
	t.Logf("all %d evals completed %s after the kill", evals, time.Since(killed).Round(time.Millisecond))

	// The dead executor cost at most quarantineAfter (+1, a release racing
	// the quarantine) failed attempts, and no fewer: the quarantine came
	// from them.
	var unavailable float64
	for k, v := range scrape(t, logs) {
		if strings.HasPrefix(k, "evalpool_executor_verdicts_total,") && strings.Contains(k, ",executor="+deadURL+",") && strings.HasSuffix(k, ",verdict=unavailable") {
			unavailable += v
		}
	}
	if unavailable < quarantineAfter || unavailable > quarantineAfter+1 {
		t.Fatalf("%v attempts found the dead executor unavailable; want %d to %d", unavailable, quarantineAfter, quarantineAfter+1)
	}
	t.Logf("%v failed attempts on the dead executor", unavailable)

	// Back on its port: in service again by its next probe, which the
	// status read after it answers shows (a probe claimed while it was
	// still down put it off), plus one reap interval and some slack.
	dead.start()
	evaltest.Eventually(t, 15*time.Second, "the restarted executor never came up", func() bool { return healthy(deadURL) })
	up := time.Now()
	backInService := func() bool {
		e, ok := executorIn(poolStatus(t, cli), deadURL)
		return ok && e.State == pool.StateAvailable && e.Quarantine == nil
	}
	e, _ := executorIn(poolStatus(t, cli), deadURL)
	switch {
	case e.Quarantine == nil && backInService():
		// A probe due just now found it up already.
		t.Logf("back in service %s after it came up, at once", time.Since(up).Round(time.Millisecond))
	case e.Quarantine == nil:
		t.Fatalf("restarted executor is %s, neither quarantined nor back in service: %+v", e.State, e)
	default:
		// The next probe is due by the backoff: the probe interval doubled
		// for each probe claimed so far, at most a minute.
		const slack = 3 * time.Second
		next := e.Quarantine.NextProbe
		if backoff := min(probeInterval<<e.Quarantine.Probes, time.Minute); next.After(up.Add(backoff + slack)) {
			t.Fatalf("next probe of the restarted executor due %s from now, after %d probes; want at most %s", next.Sub(up), e.Quarantine.Probes, backoff)
		}
		budget := max(0, time.Until(next)) + reapInterval + slack
		evaltest.Eventually(t, budget, fmt.Sprintf("the restarted executor was not back in service within its next probe (%s) + %s + %s",
			next.Format(time.StampMilli), reapInterval, slack), backInService)
		t.Logf("back in service %s after it came up (next probe was due in %s, %d probes had failed)",
			time.Since(up).Round(time.Millisecond), max(0, next.Sub(up)).Round(time.Millisecond), e.Quarantine.Probes)
	}

	if r := cli("pool", "check"); r.code != 0 {
		t.Fatalf("pool check: %+v", r)
	}
	overlaps := before.Overlaps
	for _, u := range urls {
		st, err := executorStats(u)
		if err != nil {
			t.Fatal(err)
		}
		overlaps += st.Overlaps
	}
	if overlaps != 0 {
		t.Fatalf("%d overlaps at the executors", overlaps)
	}
}

// Evals that require labels run only on executors with them, and the rarest
// class is served along the run, not after everyone else; a requirement no
// executor meets is refused at once.
func TestLabelRouting(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	servers, urls := startExecutors(t, 3, refexec.Options{Latency: 10 * time.Millisecond})
	labelArgs := [][]string{{"gpu=a100"}, {"gpu=h100", "region=eu"}, nil}
	has := map[string]map[string]string{}
	for i, u := range urls {
		args := []string{"pool", "add", u}
		has[u] = map[string]string{}
		for _, l := range labelArgs[i] {
			args = append(args, "--label", l)
			k, v, _ := strings.Cut(l, "=")
			has[u][k] = v
		}
		if r := cli(args...); r.code != 0 || !strings.HasPrefix(r.stdout, "added "+u) {
			t.Fatalf("pool add: %+v", r)
		}
	}

	// Nobody has a TPU: refused with one line, nothing enqueued.
	r := cli("enqueue", "--spec", `{}`, "--count", "5", "--require", "gpu=tpu")
	if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "evalpool: ") ||
		!strings.Contains(r.stderr, "gpu=tpu") || !strings.Contains(r.stderr, "nothing was enqueued") {
		t.Fatalf("enqueue --require gpu=tpu: %+v; want exit 1, one line naming gpu=tpu", r)
	}
	if keys := asynqKeys(t, url); len(keys) != 0 {
		t.Fatalf("a refused enqueue left Asynq keys: %v", keys)
	}

	// 600 evals, interleaved in rounds: a100 (one executor: the rarest),
	// region=eu (one executor), and any (all three).
	type class struct {
		name    string
		require map[string]string
		perRnd  int
		ids     []string
	}
	classes := []*class{
		{name: "gpu=a100", require: map[string]string{"gpu": "a100"}, perRnd: 10},
		{name: "region=eu", require: map[string]string{"region": "eu"}, perRnd: 20},
		{name: "any", perRnd: 30},
	}
	classOf := map[string]*class{}
	var all []string
	for range 10 {
		for _, c := range classes {
			args := []string{"enqueue", "--spec", `{}`, "--count", strconv.Itoa(c.perRnd), "--timeout", "30s"}
			for _, k := range slices.Sorted(maps.Keys(c.require)) {
				args = append(args, "--require", k+"="+c.require[k])
			}
			r := cli(args...)
			ids := strings.Fields(r.stdout)
			if r.code != 0 || len(ids) != c.perRnd {
				t.Fatalf("enqueue %s: %+v", c.name, r)
			}
			c.ids = append(c.ids, ids...)
			all = append(all, ids...)
			for _, id := range ids {
				classOf[id] = c
			}
		}
	}
	logs := startWorker(t, url, "--concurrency", "8", "--poll-interval", "20ms", "--retry-delay", "10ms", "--reap-interval", "1s")
	start := time.Now()
	r = waitAll(t, url, "default", 50*time.Second, all)
	if r.code != 0 || !strings.Contains(r.stderr, "600 evals: 600 passed, 0 failed, 0 errored (archived)") {
		t.Fatalf("eval wait: exit %d: %s", r.code, lastLines(r.stderr, 2))
	}
	t.Logf("600 evals in %s", time.Since(start).Round(time.Millisecond))

	// Each ran on an executor with every label it required.
	for _, c := range classes {
		r := cli(append([]string{"eval", "result"}, c.ids...)...)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != len(c.ids) {
			t.Fatalf("eval result of %s: exit %d, %d lines for %d evals: %s", c.name, r.code, len(lines), len(c.ids), lastLines(r.stderr, 2))
		}
		ran := map[string]int{}
		for i, line := range lines {
			var res struct {
				EvalID   string `json:"eval_id"`
				Executor string `json:"executor"`
			}
			if err := json.Unmarshal([]byte(line), &res); err != nil || res.EvalID != c.ids[i] {
				t.Fatalf("result of %s: %q (%v)", c.ids[i], line, err)
			}
			labels, ok := has[res.Executor]
			if !ok {
				t.Fatalf("eval %s ran on %q, not an executor of the pool", res.EvalID, res.Executor)
			}
			for k, v := range c.require {
				if labels[k] != v {
					t.Errorf("eval %s requires %s=%s, ran on %s with %v", res.EvalID, k, v, res.Executor, labels)
				}
			}
			ran[res.Executor]++
		}
		t.Logf("%s ran on %v", c.name, ran)
	}

	// The rare class is served along the run: the order of the worker's
	// "eval done" lines is the order of completion.
	var done []string
	for line := range strings.Lines(logs.String()) {
		var l struct{ Message, Eval string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Message == "eval done" {
			done = append(done, l.Eval)
		}
	}
	if len(done) != len(all) {
		t.Fatalf("the worker logged %d evals done, want %d", len(done), len(all))
	}
	rare := classes[0]
	var firstHalf, firstRare int
	firstRare = -1
	for i, id := range done {
		if classOf[id] != rare {
			continue
		}
		if firstRare < 0 {
			firstRare = i
		}
		if i < len(done)/2 {
			firstHalf++
		}
	}
	t.Logf("%s: first done at %d of %d, %d of %d in the first half", rare.name, firstRare+1, len(done), firstHalf, len(rare.ids))
	if firstRare > len(done)/10 || firstHalf < len(rare.ids)/4 {
		t.Fatalf("%s starved: its first eval done at %d of %d, %d of %d in the first half; want one in the first tenth and a quarter in the first half",
			rare.name, firstRare+1, len(done), firstHalf, len(rare.ids))
	}

	if r := cli("pool", "check"); r.code != 0 {
		t.Fatalf("pool check: %+v", r)
	}
	for i, s := range servers {
		if st := s.Stats(); st.Overlaps != 0 {
			t.Errorf("executor %s: %d overlaps", urls[i], st.Overlaps)
		}
	}
}

// pool label, quarantine, release-quarantine and add --label: what each
// prints and exits with, what each changes, and one line on stderr for
// every refusal, which changes nothing.
func TestFleetCommands(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	cli := func(args ...string) result { return runCLI(t, url, name, args...) }
	const e1, e2 = "http://e1:8080", "http://e2:8080"
	if r := cli("pool", "add", "--no-probe", e1, e2); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	// is checks e1's state and labels in `pool status --json`.
	is := func(state pool.State, labels map[string]string, reason string) func(t *testing.T) {
		return func(t *testing.T) {
			t.Helper()
			e, ok := executorIn(poolStatus(t, cli), e1)
			switch {
			case !ok:
				t.Fatalf("%s is not in the pool", e1)
			case e.State != state:
				t.Fatalf("%s is %s, want %s", e1, e.State, state)
			case len(e.Labels) != len(labels) || !maps.Equal(e.Labels, labels):
				t.Fatalf("%s has labels %v, want %v", e1, e.Labels, labels)
			case reason == "" && e.Quarantine != nil, reason != "" && (e.Quarantine == nil || e.Quarantine.Reason != reason):
				t.Fatalf("%s quarantine %+v, want reason %q", e1, e.Quarantine, reason)
			}
		}
	}
	a100 := map[string]string{"gpu": "a100"}
	h100eu := map[string]string{"gpu": "h100", "region": "eu"}
	none := map[string]string{}
	tests := []struct {
		args   []string
		code   int
		stdout string // all of it, for exit 0
		stderr string // in its one line, for an exit other than 0
		then   func(t *testing.T)
	}{
		// pool label
		{[]string{"pool", "label", e1, "gpu=a100"}, 0, "relabeled " + e1 + " gpu=a100\n", "", is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "label", e1, "gpu=a100"}, 0, "unchanged " + e1 + " gpu=a100\n", "", is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "label", "HTTP://E1:8080/", "region=eu", "gpu=h100"}, 0, "relabeled " + e1 + " gpu=h100,region=eu\n", "", is(pool.StateAvailable, h100eu, "")},
		{[]string{"pool", "label", e1, "a=1", "b=2", "c=3", "d=4", "e=5"}, 2, "", "5 labels, at most 4", is(pool.StateAvailable, h100eu, "")},
		{[]string{"pool", "label", e1, "a=b,c"}, 2, "", "a=b,c: keys and values are 1 to 63 letters", is(pool.StateAvailable, h100eu, "")},
		{[]string{"pool", "label", e1, "nokey"}, 2, "", `"nokey": want key=value`, nil},
		{[]string{"pool", "label", e1, "gpu=a100", "gpu=h100"}, 2, "", "gpu given twice", nil},
		{[]string{"pool", "label", e1}, 2, "", "give labels, or --clear for none", nil},
		{[]string{"pool", "label", e1, "--clear", "gpu=a100"}, 2, "", "give labels, or --clear for none", is(pool.StateAvailable, h100eu, "")},
		{[]string{"pool", "label", "http://nobody", "gpu=a100"}, 1, "", "unknown executor: http://nobody", nil},
		{[]string{"pool", "label", "ftp://e1", "gpu=a100"}, 2, "", "scheme must be http or https", nil},
		{[]string{"pool", "label"}, 2, "", "requires at least 1 arg", nil},
		{[]string{"pool", "label", e1, "--clear"}, 0, "relabeled " + e1 + " (no labels)\n", "", is(pool.StateAvailable, none, "")},
		{[]string{"pool", "label", e1, "--clear"}, 0, "unchanged " + e1 + " (no labels)\n", "", nil},

		// pool add --label
		{[]string{"pool", "add", "--no-probe", e1, "--label", "gpu=a100"}, 0, "relabeled " + e1 + "\n", "", is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "add", "--no-probe", e1, "--label", "gpu=a100"}, 0, "already_registered " + e1 + "\n", "", is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "add", "--no-probe", e1}, 0, "already_registered " + e1 + "\n", "", is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "add", "--no-probe", e1, "--label", "gpu=h100", "--label", "region=eu"}, 0, "relabeled " + e1 + "\n", "", is(pool.StateAvailable, h100eu, "")},
		{[]string{"pool", "add", "--no-probe", "http://e3", "--label", "a=1", "--label", "b=2", "--label", "c=3", "--label", "d=4", "--label", "e=5"}, 2, "", "5 labels, at most 4", nil},
		{[]string{"pool", "add", "--no-probe", "http://e3", "--label", "a=b,c"}, 2, "", "a=b,c: keys and values are 1 to 63 letters", nil},
		{[]string{"pool", "add", "--no-probe", e1, "--label", "gpu=a100", "--label", "gpu=h100"}, 2, "", "gpu given twice", is(pool.StateAvailable, h100eu, "")},

		// pool quarantine and release-quarantine
		{[]string{"pool", "quarantine", e1, "--reason", "disk-full"}, 0, "quarantined " + e1 + "\n", "", is(pool.StateQuarantined, h100eu, "disk-full")},
		{[]string{"pool", "quarantine", e1, "--reason", "other"}, 0, "already " + e1 + "\n", "", is(pool.StateQuarantined, h100eu, "disk-full")},
		{[]string{"pool", "label", e1, "gpu=a100"}, 0, "relabeled " + e1 + " gpu=a100\n", "", is(pool.StateQuarantined, a100, "disk-full")},
		{[]string{"pool", "release-quarantine", "HTTP://E1:8080"}, 0, "returned " + e1 + "\n", "", is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "release-quarantine", e1}, 0, "not_quarantined " + e1 + "\n", "", is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "quarantine", e1}, 0, "quarantined " + e1 + "\n", "", is(pool.StateQuarantined, a100, pool.ReasonOperator)},
		{[]string{"pool", "release-quarantine", e1}, 0, "returned " + e1 + "\n", "", is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "quarantine", "http://nobody"}, 1, "", "unknown executor: http://nobody", nil},
		{[]string{"pool", "release-quarantine", "http://nobody"}, 1, "", "unknown executor: http://nobody", nil},
		{[]string{"pool", "quarantine", e1, "not a url"}, 2, "", `executor URL "not a url"`, is(pool.StateAvailable, a100, "")},
		{[]string{"pool", "release-quarantine", "ftp://e1"}, 2, "", "scheme must be http or https", nil},
		{[]string{"pool", "quarantine"}, 2, "", "requires at least 1 arg", nil},
		{[]string{"pool", "release-quarantine"}, 2, "", "requires at least 1 arg", nil},
	}
	for i, tt := range tests {
		r := cli(tt.args...)
		line := strings.TrimSpace(r.stderr)
		if tt.code == 0 {
			if r.code != 0 || r.stdout != tt.stdout {
				t.Fatalf("step %d, %q: exit %d, stdout %q, stderr %q; want exit 0 and stdout %q", i, tt.args, r.code, r.stdout, r.stderr, tt.stdout)
			}
		} else if r.code != tt.code || r.stdout != "" || strings.Contains(line, "\n") || !strings.HasPrefix(line, "evalpool: ") || !strings.Contains(line, tt.stderr) {
			t.Fatalf("step %d, %q: exit %d, stdout %q, stderr %q; want exit %d, nothing on stdout, one line holding %q", i, tt.args, r.code, r.stdout, r.stderr, tt.code, tt.stderr)
		}
		if tt.then != nil {
			tt.then(t)
		}
	}
	st := poolStatus(t, cli)
	if len(st.Executors) != 2 {
		t.Fatalf("refused commands changed the pool: %d executors, want e1 and e2", len(st.Executors))
	}
	if e, _ := executorIn(st, e2); e.State != pool.StateAvailable || len(e.Labels) != 0 || e.Quarantine != nil {
		t.Fatalf("commands on e1 changed e2: %+v", e)
	}
	if r := cli("pool", "check"); r.code != 0 {
		t.Fatalf("pool check: %+v", r)
	}
}
