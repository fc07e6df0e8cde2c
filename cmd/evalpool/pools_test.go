package main

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
)

// `pool add` asks each executor for its instance ID: one executor under a
// second spelling of its address is refused, and so is a URL where nothing
// answers; neither registers anything.
func TestPoolAddRefusesSecondSpellingsAndSilentURLs(t *testing.T) {
	t.Parallel()
	client := evaltest.Client(t)
	url, name := evaltest.URL(t), evaltest.Pool(t, client)
	cli := func(args ...string) result { return runCLI(t, url, name, args...) }
	_, urls := startExecutors(t, 1, refexec.Options{})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(urls[0], "http://"))

	if r := cli("pool", "add", urls[0]); r.code != 0 || !strings.HasPrefix(r.stdout, "added "+urls[0]+" (healthy: ") {
		t.Fatalf("pool add: %+v", r)
	}
	for _, spelling := range []string{
		"http://localhost:" + port, "HTTP://LOCALHOST:" + port + "/", "http://localhost:0" + port + "/.",
	} {
		r := cli("pool", "add", spelling)
		if r.code != 1 || !strings.Contains(r.stdout, "duplicate http://localhost:"+port+" (registered as "+urls[0]+" in pool "+name+")") ||
			!strings.Contains(r.stderr, "already registered under another URL or in another pool") {
			t.Errorf("pool add %s: %+v; want it refused as a duplicate", spelling, r)
		}
	}
	dead := "http://" + evaltest.FreeAddr(t)
	if r := cli("pool", "add", dead); r.code != 1 || !strings.Contains(r.stderr, dead+" did not answer its health check") {
		t.Errorf("pool add of a dead URL: %+v", r)
	}
	var st struct {
		Executors []struct {
			URL        string `json:"url"`
			InstanceID string `json:"instance_id"`
		} `json:"executors"`
	}
	if err := json.Unmarshal([]byte(cli("pool", "status", "--json").stdout), &st); err != nil || len(st.Executors) != 1 || st.Executors[0].InstanceID == "" {
		t.Fatalf("status = %+v, %v; want the one executor with its instance ID", st, err)
	}
	if r := cli("pool", "check"); r.code != 0 {
		t.Fatalf("pool check: %+v", r)
	}
}

// Two pools on one Redis never mix: each pool's evals run on its own
// executors only, each pool's cleanups release its own leases, and a worker
// serving both keeps them apart too.
func TestTwoPoolsNeverMix(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	servers := map[string][]*refexec.Server{}
	for _, p := range []string{"a", "b"} {
		s, urls := startExecutors(t, 2, refexec.Options{Latency: 5 * time.Millisecond})
		servers[p] = s
		if r := runCLI(t, url, p, append([]string{"pool", "add"}, urls...)...); r.code != 0 {
			t.Fatalf("pool add to %s: %+v", p, r)
		}
	}
	common := []string{"--lease-ttl", "1s", "--poll-interval", "50ms", "--reap-interval", "1s", "--cleanup", "both"}
	startWorker(t, url, append([]string{"--pool", "a"}, common...)...)
	startWorker(t, url, append([]string{"--pool", "a,b"}, common...)...)
	for _, p := range []string{"a", "b"} {
		n := map[string]string{"a": "20", "b": "30"}[p]
		if r := runCLI(t, url, p, "enqueue", "--spec", `{}`, "--count", n, "--wait"); r.code != 0 {
			t.Fatalf("evals of pool %s: %+v", p, r)
		}
	}
	for p, want := range map[string]int64{"a": 20, "b": 30} {
		var served int64
		for _, s := range servers[p] {
			st := s.Stats()
			served += st.Served
			if st.Overlaps != 0 {
				t.Errorf("an executor of pool %s saw %d overlaps", p, st.Overlaps)
			}
		}
		if served != want {
			t.Errorf("pool %s's executors served %d evals, want its own %d", p, served, want)
		}
		evaltest.Eventually(t, 10*time.Second, "pool "+p+" never whole", func() bool {
			return runCLI(t, url, p, "pool", "check").code == 0 &&
				strings.Contains(runCLI(t, url, p, "pool", "status", "--json").stdout, `"available": 2`)
		})
	}
}
