//go:build bench

package benchmarks

import (
	_ "embed"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/pool"
)

// floorLibrary is the bare commands of a pair, without evalpool's logic.
//
//go:embed testdata/floor.lua
var floorLibrary string

var benchLine = regexp.MustCompile(`^Benchmark(\S+)-\d+\s+\d+\s+(.*)$`)

// goBench runs the pool package's Go benchmarks that match pattern, runs()
// times, and returns each figure's median by benchmark and unit:
// get("AcquireRelease/design=evalpool/executors=10", "p50-ns").
func goBench(t *testing.T, pattern string) (get func(bench, unit string) float64) {
	out, err := exec.Command("go", "test", "-run", "^$", "-bench", pattern, "-benchtime", "1s",
		"-count", strconv.Itoa(runs()), "../../pool").CombinedOutput()
	if err != nil {
		t.Fatalf("pool benchmarks: %v\n%s", err, out)
	}
	figures := map[string]map[string][]float64{}
	for line := range strings.Lines(string(out)) {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseFloat(f[i], 64)
			if figures[m[1]] == nil {
				figures[m[1]] = map[string][]float64{}
			}
			figures[m[1]][f[i+1]] = append(figures[m[1]][f[i+1]], v)
		}
	}
	return func(bench, unit string) float64 {
		v := figures[bench][unit]
		if len(v) == 0 {
			t.Fatalf("pool benchmarks: no %s for %s\n%s", unit, bench, out)
		}
		return median(v)
	}
}

// poolVsSize tabulates the pool's acquire and release, ours next to the
// original LIST design, in one process on one Redis.
func poolVsSize(t *testing.T, md *strings.Builder) {
	fig := goBench(t, "AcquireRelease")
	get := func(bench, design string, size int, unit string) float64 {
		return fig(fmt.Sprintf("%s/design=%s/executors=%d", bench, design, size), unit)
	}
	sizes := []int{10, 1000, 10_000, 100_000}
	md.WriteString("## 1. Pool operations vs pool size\n\n")
	md.WriteString("One acquire + one release of an idle executor, through go-redis over loopback: evalpool's scripts next to the original design (a LIST of JSON; RPOP then SETEX to acquire; the talk's release script, which scans and decodes the whole list). Sequential: one client, p50/p99 of the pair. Parallel: 8 clients, pairs per second (Redis-bound; for the original, its release is nearly all of the pair).\n\n")
	md.WriteString("| executors | evalpool p50 | p99 | pairs/s, 8 clients | original p50 | p99 | pairs/s, 8 clients | throughput evalpool / original |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, n := range sizes {
		ours := get("ParallelAcquireRelease", "evalpool", n, "pairs/s")
		orig := get("ParallelAcquireRelease", "original", n, "pairs/s")
		fmt.Fprintf(md, "| %s | %s | %s | %.0f | %s | %s | %.0f | %.1f× |\n", thousands(n),
			micros(get("AcquireRelease", "evalpool", n, "p50-ns")), micros(get("AcquireRelease", "evalpool", n, "p99-ns")), ours,
			micros(get("AcquireRelease", "original", n, "p50-ns")), micros(get("AcquireRelease", "original", n, "p99-ns")), orig, ours/orig)
	}
	flatP50 := get("AcquireRelease", "evalpool", 100_000, "p50-ns") / get("AcquireRelease", "evalpool", 10, "p50-ns")
	flatThr := get("ParallelAcquireRelease", "evalpool", 10, "pairs/s") / get("ParallelAcquireRelease", "evalpool", 100_000, "pairs/s")
	ratio10k := get("ParallelAcquireRelease", "evalpool", 10_000, "pairs/s") / get("ParallelAcquireRelease", "original", 10_000, "pairs/s")
	fmt.Fprintf(md, "\n- evalpool at 100,000 executors vs at 10: p50 %.2f×, throughput cost %.2f× (target ≤ 1.5×): %s\n", flatP50, flatThr, verdict(flatP50 <= 1.5 && flatThr <= 1.5))
	fmt.Fprintf(md, "- evalpool vs the original at 10,000 executors: %.0f× the throughput (target ≥ 100×): %s\n", ratio10k, verdict(ratio10k >= 100))
	lp10, lp100k := get("AcquireRelease", "labeled", 10, "p50-ns"), get("AcquireRelease", "labeled", 100_000, "p50-ns")
	lt10, lt100k := get("ParallelAcquireRelease", "labeled", 10, "pairs/s"), get("ParallelAcquireRelease", "labeled", 100_000, "pairs/s")
	fmt.Fprintf(md, "- with labels: the executors spread over 10 label sets (two labels each; each executor in the pool's available index and its own set's) and every acquire requiring one set: p50 %s at 10 executors, %s at 100,000 (%.2f×); %.0f and %.0f pairs/s with 8 clients (cost %.2f×; at 10 executors, one per set, many acquires find theirs leased and return at once) (target ≤ 1.5×): %s\n\n",
		micros(lp10), micros(lp100k), lp100k/lp10, lt10, lt100k, lt10/lt100k, verdict(lp100k/lp10 <= 1.5 && lt10/lt100k <= 1.5))
	commandsPerCall(t, md)
	scriptTime(t, md)
}

// scriptTime measures the Redis time of an acquire+release pair at 10,000
// executors, from INFO commandstats (the FCALL's or EVALSHA's usec, the
// commands the code runs included, the network not): as the function
// library, next to the same pairs run as scripts by a client whose ACL
// denies FCALL, in alternating runs on one Redis, and a script that does
// nothing, what any call costs.
func scriptTime(t *testing.T, md *strings.Builder) {
	srv := evaltest.StartACL(t, "bench", "bench")
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "bench", Password: "bench"})
	defer c.Close()
	ctx := t.Context()
	if err := c.Do(ctx, "ACL", "SETUSER", "scripts", "on", ">bench", "~*", "&*", "+@all", "-fcall").Err(); err != nil {
		t.Fatal(err)
	}
	scripts := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "scripts", Password: "bench"})
	defer scripts.Close()
	execs := make([]pool.Executor, 10_000)
	for i := range execs {
		execs[i].URL = fmt.Sprintf("http://10.0.%d.%d:8080", i/256, i%256)
	}
	const pairs = 5000
	// pairTime is the Redis time per pair of client c on a pool of its own.
	pairTime := func(c *redis.Client, name string) float64 {
		p, err := pool.New(c, pool.Options{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Register(ctx, execs...); err != nil {
			t.Fatal(err)
		}
		before := scriptUsec(t, c)
		for i := range pairs {
			l, err := p.Acquire(ctx, fmt.Sprintf("eval-%d", i), time.Minute, pool.AcquireArgs{})
			if err == nil {
				_, err = p.Release(ctx, l, pool.ReleaseArgs{Path: "bench"})
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		return (scriptUsec(t, c) - before) / pairs
	}
	if err := c.Do(ctx, "FUNCTION", "LOAD", "REPLACE", floorLibrary).Err(); err != nil {
		t.Fatal(err)
	}
	// bareTime is the Redis time per pair of the floor library's functions
	// prefix_acquire and prefix_release, on a pool of their own.
	bareTime := func(prefix, name string) float64 {
		p, err := pool.New(c, pool.Options{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Register(ctx, execs...); err != nil {
			t.Fatal(err)
		}
		k := keys.ForPool(name).Script()
		before := scriptUsec(t, c)
		for i := range pairs {
			url, err := c.FCall(ctx, prefix+"_acquire", k, fmt.Sprintf("eval-%d", i), "0123456789abcdef0123456789abcdef").Text()
			if err == nil {
				err = c.FCall(ctx, prefix+"_release", k, url).Err()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		return (scriptUsec(t, c) - before) / pairs
	}
	nothing := redis.NewScript("return 1")
	k := keys.ForPool("script-time").Script()
	var library, script, floor, bare, six []float64
	for run := range runs() {
		library = append(library, pairTime(c, fmt.Sprint("library-", run)))
		script = append(script, pairTime(scripts, fmt.Sprint("script-", run)))
		bare = append(bare, bareTime("floor", fmt.Sprint("bare-", run)))
		six = append(six, bareTime("floor6", fmt.Sprint("six-", run)))
		before := scriptUsec(t, c)
		for range 2 * pairs {
			if err := nothing.Run(ctx, c, k).Err(); err != nil {
				t.Fatal(err)
			}
		}
		floor = append(floor, (scriptUsec(t, c)-before)/pairs)
	}
	each, bares := make([]string, len(library)), make([]string, len(library))
	for i := range library {
		each[i] = fmt.Sprintf("%.1f / %.1f", library[i], script[i])
		bares[i] = fmt.Sprintf("%.1f / %.1f / %.1f", library[i], bare[i], six[i])
	}
	fmt.Fprintf(md, "Redis time per acquire+release pair at 10,000 executors (the calls' `usec` in `INFO commandstats`, the commands they run included, the network not; %d pairs a run): %.1f µs as the function library, %.1f µs as scripts (%.2f×; runs, library / scripts: %s µs); target ≤ 20 µs: %s. Two calls of a script that does nothing cost %.1f µs.\n\n",
		pairs, median(library), median(script), median(library)/median(script), strings.Join(each, ", "), verdict(median(library) <= 20), median(floor))
	fmt.Fprintf(md, "The same pairs as bare commands, none of evalpool's logic (`internal/benchmarks/testdata/floor.lua`, in the same runs): %.1f µs for the commands the guarantees need on the common path (10 per call, the `FCALL` included: the pool's time, the cancellation, re-entry, the lease in its record, its deadline, the wait lists' guard, the history), %.1f µs for six per call with none of those but the record and the indexes; evalpool is %.2f× the first and %.2f× the second (runs, evalpool / bare / six: %s µs).\n\n",
		median(bare), median(six), median(library)/median(bare), median(library)/median(six), strings.Join(bares, ", "))
}

// scriptUsec is the time Redis has spent in FCALL and EVALSHA, in µs.
func scriptUsec(t *testing.T, c *redis.Client) float64 {
	return evaltest.CommandStat(t, c, "usec", func(name string) bool { return name == "fcall" || name == "evalsha" })
}

// commandsPerCall counts the Redis commands one Acquire and one Release
// run, from INFO commandstats deltas on a Redis of their own (the EVALSHA
// and every command inside the script), on the common path (no labels, no
// waiter) and with executors of 3 labels, one of them required.
func commandsPerCall(t *testing.T, md *strings.Builder) {
	srv := evaltest.StartT(t, evaltest.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	ctx := t.Context()
	const n = 200
	count := func(name string, require map[string]string) (acquire, release float64) {
		p, err := pool.New(c, pool.Options{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		var labels map[string]string
		if require != nil {
			labels = map[string]string{"gpu": "a100", "region": "eu", "tier": "large"}
		}
		var execs []pool.Executor
		for i := range 10 {
			execs = append(execs, pool.Executor{URL: fmt.Sprintf("http://e%d", i), Labels: labels})
		}
		if _, err := p.Register(ctx, execs...); err != nil {
			t.Fatal(err)
		}
		var acq, rel float64
		for i := range n + 1 {
			before := commandCalls(t, c)
			l, err := p.Acquire(ctx, fmt.Sprintf("eval-%d", i), time.Minute, pool.AcquireArgs{Require: require})
			if err != nil {
				t.Fatal(err)
			}
			mid := commandCalls(t, c)
			if _, err := p.Release(ctx, l, pool.ReleaseArgs{Path: "bench"}); err != nil {
				t.Fatal(err)
			}
			if i > 0 { // the first loads the scripts
				acq += mid - before
				rel += commandCalls(t, c) - mid
			}
		}
		return acq / n, rel / n
	}
	a0, r0 := count("commands-plain", nil)
	a3, r3 := count("commands-labels", map[string]string{"gpu": "a100"})
	fmt.Fprintf(md, "Redis commands per call, `INFO commandstats` deltas (the `FCALL` and every command its function runs), an idle pool of 10 executors: acquire %.0f, release %.0f on the common path (no labels, no waiter; target ≤ 6 each); %.0f and %.0f when the executors have 3 labels and the acquire requires one (target ≤ 8).\n\n", a0, r0, a3, r3)
}

// heartbeats compares a heartbeat per eval (one renew per lease) with the
// worker's one heartbeat for all its leases.
func heartbeats(t *testing.T, md *strings.Builder) {
	get := goBench(t, "Renew")
	md.WriteString("## 6. Heartbeats\n\nA worker renews the leases of its running evals every TTL/3. Renewing them one by one costs a round trip and a script call per lease; the worker's heartbeat renews every lease due within the next TTL/6 in one `RenewAll` (one script call, a lookup per lease). Per lease renewed, sequential, over loopback:\n\n")
	md.WriteString("| leases held | one call per lease | Redis CPU | one call for all | Redis CPU | time saved |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, n := range []int{16, 256} {
		each, all := fmt.Sprintf("Renew/leases=%d/batch=each", n), fmt.Sprintf("Renew/leases=%d/batch=all", n)
		fmt.Fprintf(md, "| %d | %.1f µs | %.1f µs | %.1f µs | %.1f µs | %.0f× |\n", n,
			get(each, "ns/lease")/1e3, get(each, "redis-cpu-ns/lease")/1e3, get(all, "ns/lease")/1e3, get(all, "redis-cpu-ns/lease")/1e3,
			get(each, "ns/lease")/get(all, "ns/lease"))
	}
	md.WriteString("\nWith 30 s leases a worker sends about two renewals per 10 s whatever it holds; the worker test `TestHeartbeatRenewsAllLeasesAtOnce` holds it to at most a third as many calls as renewals (6 evals of 5 s on 1 s leases; one heartbeat per eval fails it, a call per renewal).\n\n")
}

func verdict(ok bool) string {
	if ok {
		return "**met**"
	}
	return "**missed**"
}

func micros(ns float64) string {
	switch {
	case ns >= 1e6:
		return fmt.Sprintf("%.1f ms", ns/1e6)
	default:
		return fmt.Sprintf("%.0f µs", ns/1e3)
	}
}

func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
