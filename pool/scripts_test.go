package pool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/lua"
)

// lifecycle drives every script once and checks the pool is whole after.
func lifecycle(t *testing.T, p *Pool) {
	t.Helper()
	ctx := t.Context()
	register(t, p, "http://e1", "http://e2")
	register(t, p, "http://e3")
	a := acquire(t, p, "eval-a", time.Minute)
	a = acquire(t, p, "eval-a", time.Minute)
	if _, err := p.Renew(ctx, a, time.Minute); err != nil {
		t.Fatal(err)
	}
	release(t, p, a, Released)
	release(t, p, a, AlreadyInPool)
	acquire(t, p, "eval-b", time.Millisecond)
	evaltest.Eventually(t, 5*time.Second, "short lease never reaped", func() bool {
		n, err := p.Reap(ctx)
		return err == nil && n == 1
	})
	if out, err := p.Deregister(ctx, "http://e3"); err != nil || out != Removed {
		t.Fatalf("Deregister = %s, %v", out, err)
	}
	acquire(t, p, "eval-d", time.Minute)
	acquire(t, p, "eval-c", 20*time.Millisecond)
	evaltest.Eventually(t, 5*time.Second, "short lease never expired", func() bool {
		c, err := p.Counts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c == Counts{Registered: 2, Available: 0, Leased: 2, Expired: 1}
	})
	evaltest.Eventually(t, 5*time.Second, "expired lease never reaped", func() bool {
		n, err := p.Reap(ctx)
		return err == nil && n == 1
	})
	release(t, p, acquire(t, p, "eval-d", time.Minute), Released)
	// The wait list: join, a handoff through the wake list, leave.
	x, y := acquire(t, p, "eval-x", time.Minute), acquire(t, p, "eval-y", time.Minute)
	wake, token := waitFor(t, p, "eval-w", 1, time.Minute)
	release(t, p, x, Released)
	w := granted(t, p, wake, "eval-w", token)
	_, vToken := waitFor(t, p, "eval-v", 1, time.Minute)
	if out, _, err := p.Leave(ctx, "eval-v", vToken); err != nil || out != Left {
		t.Fatalf("Leave = %s, %v", out, err)
	}
	release(t, p, w, Released)
	release(t, p, y, Released)
	// Labels and quarantine.
	if _, err := p.Relabel(ctx, "http://e1", map[string]string{"gpu": "a100"}); err != nil {
		t.Fatal(err)
	}
	gpu, err := p.Acquire(ctx, "eval-gpu", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "a100"}})
	if err != nil || gpu.URL != "http://e1" {
		t.Fatalf("acquire gpu=a100: %s, %v", gpu.URL, err)
	}
	release(t, p, gpu, Released)
	if _, err := p.Quarantine(ctx, "http://e2", ReasonOperator); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ProbeQuarantined(ctx, 10, func(context.Context, string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ReturnToService(ctx, "http://e2"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Tick(ctx, Clock{}); err != nil {
		t.Fatal(err)
	}
	assertWhole(t, p, "http://e1", "http://e2")
}

// TestScriptsRunAfterFlush: a server that lost the library and the scripts
// (a restart without persistence, FUNCTION FLUSH, SCRIPT FLUSH) loads them
// again on the next call, in whichever form it serves.
func TestScriptsRunAfterFlush(t *testing.T) {
	t.Parallel()
	// A server of its own: flushing the shared one would race with the
	// other tests.
	client := redis.NewClient(&redis.Options{Addr: evaltest.StartT(t, evaltest.Options{}).Addr})
	defer client.Close()
	lifecycle(t, poolOn(t, client, "first")) // loads the library on its first call
	if libs, err := client.FunctionList(t.Context(), redis.FunctionListQuery{}).Result(); err != nil || len(libs) != 1 {
		t.Fatalf("libraries after use: %+v, %v; want one", libs, err)
	}
	if err := client.FunctionFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if err := client.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	p := poolOn(t, client, "second")
	for name, s := range lua.All {
		err := s.EvalSha(t.Context(), client, p.script).Err()
		if err == nil || !redis.HasErrorPrefix(err, "NOSCRIPT") {
			t.Fatalf("EVALSHA %s after SCRIPT FLUSH: err = %v, want NOSCRIPT", name, err)
		}
	}
	lifecycle(t, p)
}

// TestScriptsRunWhereFunctionsAreDenied: a client whose ACL denies FCALL,
// or lets it call functions but not load them, runs the same code as
// scripts, and says nothing of it.
func TestScriptsRunWhereFunctionsAreDenied(t *testing.T) {
	t.Parallel()
	for name, rule := range map[string]string{"FCALL": "-fcall", "FUNCTION LOAD": "-function|load"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := evaltest.StartACL(t, "evalpool", "secret")
			admin := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "evalpool", Password: "secret"})
			defer admin.Close()
			if err := admin.Do(t.Context(), "ACL", "SETUSER", "denied", "on", ">secret", "~*", "&*", "+@all", rule).Err(); err != nil {
				t.Fatal(err)
			}
			client := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "denied", Password: "secret"})
			defer client.Close()
			p := poolOn(t, client, "denied")
			lifecycle(t, p)
			if ok, err := lua.Acquire.Exists(t.Context(), client).Result(); err != nil || !ok[0] {
				t.Fatalf("acquire not run as a script: %v, %v", ok, err)
			}
		})
	}
}

// TestReleaseAlongWhereFunctionsAreDeniedLater: a client that called the
// library before its ACL denied FCALL still releases with commands along:
// the pipelined call the server refuses is sent again as a script.
func TestReleaseAlongWhereFunctionsAreDeniedLater(t *testing.T) {
	t.Parallel()
	srv := evaltest.StartACL(t, "evalpool", "secret")
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "evalpool", Password: "secret"})
	defer client.Close()
	p := poolOn(t, client, "denied-later")
	register(t, p, "http://e1")
	release(t, p, acquire(t, p, "eval-a", time.Minute), Released)
	if err := client.Do(t.Context(), "ACL", "SETUSER", "evalpool", "-fcall").Err(); err != nil {
		t.Fatal(err)
	}
	l := acquire(t, p, "eval-b", time.Minute)
	key := p.keys.Scratch("test-along")
	r, err := p.Release(t.Context(), l, ReleaseArgs{Path: "test", Pipelined: func(pipe redis.Pipeliner) {
		pipe.Set(t.Context(), key, "written", time.Minute)
	}})
	if err != nil || r.Outcome != Released {
		t.Fatalf("release along once FCALL is denied: %+v, %v; want released", r, err)
	}
	assertWhole(t, p, "http://e1")
}

// TestScriptErrorsAreNotTakenForTheServers: an eval's ID that quotes the
// server's answers about functions, in the error an acquire of it returns,
// neither reloads the library nor turns the client to scripts.
func TestScriptErrorsAreNotTakenForTheServers(t *testing.T) {
	t.Parallel()
	client := redis.NewClient(&redis.Options{Addr: evaltest.StartT(t, evaltest.Options{}).Addr})
	defer client.Close()
	p := poolOn(t, client, "quoted")
	register(t, p, "http://e1")
	release(t, p, acquire(t, p, "eval-a", time.Minute), Released)
	sent := &commandNames{}
	client.AddHook(sent)
	for _, id := range []string{"ERR Function not found", "ERR unknown command fcall", "NOPERM function"} {
		if err := p.Cancel(t.Context(), id); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Acquire(t.Context(), id, time.Minute, AcquireArgs{}); !errors.Is(err, ErrCancelled) {
			t.Fatalf("acquire of cancelled %q: %v, want ErrCancelled", id, err)
		}
	}
	release(t, p, acquire(t, p, "eval-b", time.Minute), Released)
	if got := sent.names(); slices.ContainsFunc(got, func(n string) bool { return n == "function" || n == "evalsha" || n == "eval" }) {
		t.Fatalf("commands sent: %v; want every call an FCALL, and no FUNCTION LOAD", got)
	}
}

// commandNames records the names of the commands a client sends.
type commandNames struct {
	mu   sync.Mutex
	sent []string
}

func (h *commandNames) names() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.sent)
}

func (h *commandNames) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *commandNames) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.mu.Lock()
		h.sent = append(h.sent, cmd.Name())
		h.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (h *commandNames) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.mu.Lock()
		for _, c := range cmds {
			h.sent = append(h.sent, c.Name())
		}
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestClusterOneSlotPerPool runs every operation on a real 3-master Redis
// Cluster through go-redis's cluster client. Redis refuses a script whose
// keys span slots (CROSSSLOT), and the pools below land on different nodes.
func TestClusterOneSlotPerPool(t *testing.T) {
	t.Parallel()
	addrs := evaltest.StartCluster(t, 3)
	c := evaltest.ClusterClient(t, addrs)
	nodes := map[string]bool{}
	for i := range 6 {
		p, err := New(c, Options{Name: fmt.Sprintf("pool-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		slots := map[int64]bool{}
		for _, k := range p.Keys() {
			slot, err := c.ClusterKeySlot(t.Context(), k).Result()
			if err != nil {
				t.Fatal(err)
			}
			slots[slot] = true
		}
		if len(slots) != 1 {
			t.Fatalf("pool %s keys span slots %v", p.Name(), slots)
		}
		node, err := c.MasterForKey(t.Context(), p.keys.Executors())
		if err != nil {
			t.Fatal(err)
		}
		nodes[node.Options().Addr] = true
		t.Run(p.Name(), func(t *testing.T) { lifecycle(t, p) })
		// Check walks the pool's keys on the node of its slot.
		key := p.keys.LabelledFor("x")
		if err := c.Set(t.Context(), key, "not ours", 0).Err(); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("invariant 10: %s holds a string, not a zset: not written by evalpool", key)
		if got := checkLines(t, p); !slices.Equal(got, []string{want}) {
			t.Fatalf("Check of %s = %q, want %q", p.Name(), got, want)
		}
	}
	if len(nodes) < 2 {
		t.Errorf("all pools landed on one node %v: the test did not exercise routing", nodes)
	}
	// A script given keys of two pools is refused by Redis: the check above
	// is not vacuous.
	a, _ := New(c, Options{Name: "pool-0"})
	b, _ := New(c, Options{Name: "pool-1"})
	mixed := a.keys.Script()
	mixed[1] = b.keys.Available()
	err := lua.Reap.Run(t.Context(), c, mixed, 10).Err()
	if err == nil || !redis.HasErrorPrefix(err, "CROSSSLOT") {
		t.Fatalf("cross-slot script: err = %v, want CROSSSLOT", err)
	}
}

// TestCheckFindsViolations corrupts pools behind evalpool's back and makes
// sure Check reports each corruption: a Check that cannot fail proves nothing.
func TestCheckFindsViolations(t *testing.T) {
	t.Parallel()
	lease := func(eval string) string {
		return fmt.Sprintf(`{"token":"t-%s","eval_id":"%s","fence":1,"acquired_at":1,"available_since":1}`, eval, eval)
	}
	tests := []struct {
		name    string
		corrupt func(ctx context.Context, c *redis.Client, k keys.Pool) error
		want    string
	}{
		{"lost executor", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			return c.ZRem(ctx, k.Available(), "http://e1").Err()
		}, "invariant 4: http://e1: lost: registered but neither available, leased nor quarantined"},
		{"available and leased", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			if err := writeField(ctx, c, k, "http://e1", "lease", lease("x")); err != nil {
				return err
			}
			c.ZAdd(ctx, k.Deadlines(), redis.Z{Score: 1e15, Member: "http://e1"})
			return c.HSet(ctx, k.Holders(), "x", "http://e1").Err()
		}, "invariant 1: http://e1: both available and leased"},
		{"unregistered available", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			return c.ZAdd(ctx, k.Available(), redis.Z{Score: 1, Member: "http://ghost"}).Err()
		}, "invariant 2: http://ghost: available but not registered"},
		{"deadline without lease", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			return c.ZAdd(ctx, k.Deadlines(), redis.Z{Score: 1, Member: "http://e2"}).Err()
		}, "invariant 2: http://e2: deadline without a lease"},
		{"eval holds two", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			for _, u := range []string{"http://e1", "http://e2"} {
				c.ZRem(ctx, k.Available(), u)
				if err := writeField(ctx, c, k, u, "lease", lease("x")); err != nil {
					return err
				}
				c.ZAdd(ctx, k.Deadlines(), redis.Z{Score: 1e15, Member: u})
			}
			return c.HSet(ctx, k.Holders(), "x", "http://e1").Err()
		}, "invariant 3: http://e1: eval x holds 2 executors: [http://e1 http://e2]"},
		{"draining but idle", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			return c.SAdd(ctx, k.Draining(), "http://e2").Err()
		}, "invariant 2: http://e2: draining but not leased: should have been removed"},
		{"draining with no mark", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			return c.SAdd(ctx, k.Draining(), "http://e2").Err()
		}, "invariant 2: http://e2: draining set and record disagree: in the set true, record draining 0"},
		{"quarantined with no date", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			c.ZRem(ctx, k.Available(), "http://e2")
			return c.ZAdd(ctx, k.Quarantine(), redis.Z{Score: 1, Member: "http://e2"}).Err()
		}, "invariant 7: http://e2: quarantine schedule and record disagree: scheduled true, quarantined_at 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, "http://e1", "http://e2")
			if err := tt.corrupt(t.Context(), b.client, p.keys); err != nil {
				t.Fatal(err)
			}
			vs, err := p.Check(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, v := range vs {
				got = append(got, v.String())
				if v.String() == tt.want {
					return
				}
			}
			t.Fatalf("Check = %q, want it to hold %q", got, tt.want)
		})
	}
}

// TestForeignDataIsReported puts data of the wrong type under each key of
// a working pool in turn, on pools in several states: Check reports that
// key alone (invariant 10), with its type and the one the layout gives it.
// The scripts no longer check types (docs/reliability.md, "Threat model"),
// so every operation is run over it too: each may fail, but with one line
// that wraps ErrForeignData when Redis refused a type, and no acquire ever
// grants an executor another eval holds. The epoch is left out: only its
// presence counts.
func TestForeignDataIsReported(t *testing.T) {
	t.Parallel()
	const idle, saturated, draining, lingering, stray, expired, failing, labelled = "idle", "saturated", "draining", "lingering", "stray", "expired", "failing", "labelled"
	every := []string{idle, saturated, draining, lingering, stray, expired, failing, labelled}
	type op struct {
		// run returns the lease an acquire granted, if any.
		run func(p *Pool, held Lease) (Lease, error)
		// in names the states the operation runs on.
		in []string
	}
	noLease := func(err error) (Lease, error) { return Lease{}, err }
	ops := map[string]op{
		"register": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Register(t.Context(), Executor{URL: "http://new"})
			return noLease(err)
		}, in: []string{idle}},
		"register many": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Register(t.Context(), Executor{URL: "http://n1"}, Executor{URL: "http://n2"})
			return noLease(err)
		}, in: []string{idle}},
		"deregister": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Deregister(t.Context(), "http://e1")
			return noLease(err)
		}, in: []string{idle}},
		"acquire": {run: func(p *Pool, _ Lease) (Lease, error) {
			return p.Acquire(t.Context(), "eval-x", time.Minute, AcquireArgs{})
		},
			in: []string{idle, saturated, stray, expired}},
		"acquire requiring labels": {run: func(p *Pool, _ Lease) (Lease, error) {
			return p.Acquire(t.Context(), "eval-x", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "a100"}})
		}, in: []string{labelled}},
		"acquire by the holder": {run: func(p *Pool, _ Lease) (Lease, error) {
			return p.Acquire(t.Context(), "eval-a", time.Minute, AcquireArgs{})
		},
			in: []string{idle, draining}},
		"acquire or wait": {run: func(p *Pool, _ Lease) (Lease, error) {
			return p.Acquire(t.Context(), "eval-x", time.Minute, AcquireArgs{Wait: Wait{Wake: p.WakeKey("w"), PlaceTTL: time.Minute}})
		}, in: []string{saturated}},
		"acquire by a waiter": {run: func(p *Pool, _ Lease) (Lease, error) {
			return p.Acquire(t.Context(), "eval-w", time.Minute, AcquireArgs{Wait: Wait{Wake: p.WakeKey("w"), PlaceTTL: time.Minute}})
		}, in: []string{saturated, lingering}},
		"renew": {run: func(p *Pool, held Lease) (Lease, error) {
			_, err := p.Renew(t.Context(), held, time.Minute)
			return noLease(err)
		}, in: []string{idle}},
		"release": {run: func(p *Pool, held Lease) (Lease, error) {
			_, err := p.Release(t.Context(), held, ReleaseArgs{Path: "test"})
			return noLease(err)
		}, in: []string{idle, saturated, draining}},
		"release unavailable": {run: func(p *Pool, held Lease) (Lease, error) {
			_, err := p.Release(t.Context(), held, ReleaseArgs{Path: "test", Verdict: VerdictUnavailable, Retrying: true})
			return noLease(err)
		}, in: []string{idle, failing}},
		"release stale": {run: func(p *Pool, held Lease) (Lease, error) {
			_, err := p.Release(t.Context(), Lease{URL: held.URL, Token: "t"}, ReleaseArgs{Path: "test", ByCleanup: true})
			return noLease(err)
		}, in: []string{idle}},
		"release of a free executor": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Release(t.Context(), Lease{URL: "http://e2", Token: "t"}, ReleaseArgs{Path: "test"})
			return noLease(err)
		}, in: []string{idle}},
		"leave": {run: func(p *Pool, held Lease) (Lease, error) {
			_, _, err := p.Leave(t.Context(), held.EvalID, held.Token)
			return noLease(err)
		}, in: []string{idle}},
		"reap": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Reap(t.Context())
			return noLease(err)
		}, in: []string{idle}},
		"counts": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Counts(t.Context())
			return noLease(err)
		}, in: []string{idle}},
		"relabel": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Relabel(t.Context(), "http://e1", map[string]string{"gpu": "a100"})
			return noLease(err)
		}, in: []string{idle}},
		"quarantine": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Quarantine(t.Context(), "http://e3", ReasonOperator)
			return noLease(err)
		}, in: []string{idle}},
		"status": {run: func(p *Pool, _ Lease) (Lease, error) {
			_, err := p.Status(t.Context())
			return noLease(err)
		}, in: every},
	}
	// The acquires run first, so that a grant of an executor some eval
	// holds is a double booking, not one a release in between freed.
	var order []string
	for _, name := range slices.Sorted(maps.Keys(ops)) {
		if strings.HasPrefix(name, "acquire") {
			order = append(order, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(ops)) {
		if !strings.HasPrefix(name, "acquire") {
			order = append(order, name)
		}
	}
	// Each state holds eval-a's lease on e1; saturated leases e2 and e3 too
	// and has eval-w waiting, draining has e1 deregistered. Lingering has
	// eval-w in the wait list while executors are free, as after a race
	// between its acquire and a release: its next acquire takes one and
	// leaves the line.
	states := map[string]func(t *testing.T, p *Pool){
		idle: func(*testing.T, *Pool) {},
		saturated: func(t *testing.T, p *Pool) {
			acquire(t, p, "eval-b", time.Minute)
			acquire(t, p, "eval-c", time.Minute)
			if _, err := p.Acquire(t.Context(), "eval-w", time.Minute, AcquireArgs{Wait: Wait{Wake: p.WakeKey("w"), PlaceTTL: time.Minute}}); !errors.Is(err, ErrWaiting) {
				t.Fatalf("eval-w: err = %v, want ErrWaiting", err)
			}
		},
		lingering: func(t *testing.T, p *Pool) {
			c := p.client
			if err := c.ZAdd(t.Context(), p.keys.Waiters(), redis.Z{Score: 1, Member: "eval-w"}).Err(); err != nil {
				t.Fatal(err)
			}
			if err := c.HSet(t.Context(), p.keys.Waiting(), "eval-w", `{"token":"t","ttl":60000,"wake":"`+p.WakeKey("w")+`","expires":1}`).Err(); err != nil {
				t.Fatal(err)
			}
		},
		// Stray has an entry in the available index for no executor, the
		// oldest: an acquire drops it before it takes e2.
		stray: func(t *testing.T, p *Pool) {
			if err := p.client.ZAdd(t.Context(), p.keys.Available(), redis.Z{Score: 0, Member: "http://gone"}).Err(); err != nil {
				t.Fatal(err)
			}
		},
		// Expired has eval-a's lease past its deadline and grace: an
		// acquire reclaims it first.
		expired: func(t *testing.T, p *Pool) {
			if err := p.client.ZAdd(t.Context(), p.keys.Deadlines(), redis.Z{Score: 0, Member: "http://e1"}).Err(); err != nil {
				t.Fatal(err)
			}
		},
		// Failing has e1 one unavailable call short of its quarantine: its
		// release with that verdict takes it out of service.
		failing: func(t *testing.T, p *Pool) {
			if err := p.client.HSet(t.Context(), p.keys.Executors(), "http://e1", fmt.Sprintf(`{"added_at":1,"fails":%d}`, DefaultQuarantine-1)).Err(); err != nil {
				t.Fatal(err)
			}
		},
		// Labelled has e2 labelled: an acquire that requires its label
		// takes it from its set's index, and out of the pool's own.
		labelled: func(t *testing.T, p *Pool) {
			if _, err := p.Relabel(t.Context(), "http://e2", map[string]string{"gpu": "a100"}); err != nil {
				t.Fatal(err)
			}
		},
		draining: func(t *testing.T, p *Pool) {
			if _, err := p.Deregister(t.Context(), "http://e1"); err != nil {
				t.Fatal(err)
			}
		},
	}
	suffixes := []string{"executors", "available", "leases", "deadlines", "holders", "draining", "fence", "epoch", "instances", "waiters", "waiting", "quarantine", "avoid", "labelsets", "cancelled", "history", "outlived", "clock"}
	types := []string{"hash", "zset", "hash", "zset", "hash", "set", "string", "string", "hash", "zset", "hash", "zset", "hash", "hash", "zset", "stream", "zset", "hash"}
	// The fence is also foreign as a string INCR refuses: one with a
	// leading zero, or at the int64 limit.
	fenceStrings := map[string]string{"fence 007": "007", "fence at the limit": "9223372036854775807"}
	for state, prepare := range states {
		for i, suffix := range append(slices.Clone(suffixes), slices.Sorted(maps.Keys(fenceStrings))...) {
			if suffix == "epoch" || suffix == "leases" { // their presence alone counts
				continue
			}
			if _, ok := fenceStrings[suffix]; ok {
				i = slices.Index(suffixes, "fence")
			}
			t.Run(state+"/"+suffix, func(t *testing.T) {
				t.Parallel()
				p, b := setup(t, "http://e1", "http://e2", "http://e3")
				held := acquire(t, p, "eval-a", time.Minute)
				prepare(t, p)
				// holder is the eval each executor is leased to, unless
				// its lease is past its grace: an acquire may reclaim it.
				st, err := p.Status(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				holder := map[string]string{}
				for _, e := range st.Executors {
					if e.Lease != nil && e.Lease.Deadline.Add(testGrace).After(st.Now) {
						holder[e.URL] = e.Lease.EvalID
					}
				}
				key := p.script[i]
				if err := b.client.Del(t.Context(), key).Err(); err != nil {
					t.Fatal(err)
				}
				foreign := func() error { return b.client.Set(t.Context(), key, "not ours", 0).Err() }
				want := fmt.Sprintf("invariant 10: %s holds a string, not a %s: not written by evalpool", key, types[i])
				switch v, ok := fenceStrings[suffix]; {
				case ok:
					foreign = func() error { return b.client.Set(t.Context(), key, v, 0).Err() }
					want = fmt.Sprintf("invariant 10: %s holds %q, not an integer of at most 18 digits: not written by evalpool", key, v)
				case suffix == "fence": // the fence is a string: a list is foreign to it
					foreign = func() error { return b.client.LPush(t.Context(), key, "not ours").Err() }
					want = fmt.Sprintf("invariant 10: %s holds a list, not a string: not written by evalpool", key)
				}
				if err := foreign(); err != nil {
					t.Fatal(err)
				}
				if got := checkLines(t, p); !slices.Equal(got, []string{want}) {
					t.Fatalf("Check = %q, want %q", got, want)
				}
				for _, name := range order {
					o := ops[name]
					if !slices.Contains(o.in, state) {
						continue
					}
					l, err := o.run(p, held)
					if err != nil {
						if strings.Contains(err.Error(), "\n") {
							t.Errorf("%s: error is not one line: %q", name, err)
						}
						if strings.Contains(err.Error(), "WRONGTYPE") && !errors.Is(err, ErrForeignData) {
							t.Errorf("%s over a foreign %s: err = %v, want it to wrap ErrForeignData", name, suffix, err)
						}
						continue
					}
					if l.URL == "" {
						continue
					}
					if h, ok := holder[l.URL]; ok && h != l.EvalID {
						t.Errorf("%s over a foreign %s granted %s to %s while %s holds it", name, suffix, l.URL, l.EvalID, h)
					}
					holder[l.URL] = l.EvalID
				}
				got := checkLines(t, p)
				if _, ok := fenceStrings[suffix]; ok && !slices.Contains(got, want) {
					// An acquire replaced the counter by Redis's clock.
					if n, err := b.client.Get(t.Context(), key).Int64(); err != nil || n < held.Fence || len(got) > 0 {
						t.Fatalf("after the operations, the fence is %d (%v) and Check = %q; want it replaced by one above %d, and no violation", n, err, got, held.Fence)
					}
				} else if !slices.Contains(got, want) {
					t.Fatalf("after the operations, Check = %q, want it to hold %q", got, want)
				}
			})
		}
	}
}

// TestCheckReportsForeignTypes covers the keys named beside the scripts'
// own: the label sets' indexes, the wake lists and the reap marker are
// reported when another type is under them; scratch keys and names the
// layout does not know are left alone.
func TestCheckReportsForeignTypes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		key  func(k keys.Pool) string
		want string // the type Check expects; "" for no violation
	}{
		{"label index", func(k keys.Pool) string { return k.LabelledFor("gpu=a100") }, "zset"},
		{"label wait list", func(k keys.Pool) string { return k.WaitersFor("gpu=a100") }, "zset"},
		{"wake list", func(k keys.Pool) string { return k.Wake("w1") }, "list"},
		{"clock", func(k keys.Pool) string { return k.Clock() }, "hash"},
		{"scratch", func(k keys.Pool) string { return k.Scratch("x") }, ""},
		{"unknown name", func(k keys.Pool) string { return k.Executors() + "-old" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, b := setup(t, "http://e1")
			key := tt.key(p.keys)
			if err := b.client.SAdd(t.Context(), key, "not ours").Err(); err != nil {
				t.Fatal(err)
			}
			var want []string
			if tt.want != "" {
				want = []string{fmt.Sprintf("invariant 10: %s holds a set, not a %s: not written by evalpool", key, tt.want)}
			}
			if got := checkLines(t, p); !slices.Equal(got, want) {
				t.Fatalf("Check = %q, want %q", got, want)
			}
		})
	}
}

// A leased executor listed as free is written by no script: the scripts
// trust the available index (docs/reliability.md, "Threat model"), and
// Check is where such a write is found.
func TestCheckReportsALeasedExecutorListedAsFree(t *testing.T) {
	t.Parallel()
	p, b := setup(t, "http://e1", "http://e2")
	held := acquire(t, p, "eval-a", time.Minute)
	if err := b.client.ZAdd(t.Context(), p.keys.Available(), redis.Z{Score: 0, Member: held.URL}).Err(); err != nil {
		t.Fatal(err)
	}
	got := checkLines(t, p)
	if len(got) == 0 || !strings.Contains(strings.Join(got, "\n"), held.URL) {
		t.Fatalf("Check = %q, want the leased %s listed as available", got, held.URL)
	}
}

// checkLines is Check's violations as text.
func checkLines(t *testing.T, p *Pool) []string {
	t.Helper()
	vs, err := p.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vs {
		out = append(out, v.String())
	}
	return out
}
