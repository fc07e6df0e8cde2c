package pool

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/internal/lua"
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
	gpu, err := p.AcquireWith(ctx, "eval-gpu", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "a100"}})
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

func TestScriptsRunAfterScriptFlush(t *testing.T) {
	t.Parallel()
	// A server of its own: flushing the shared one's script cache would race
	// with the other tests.
	client := redis.NewClient(&redis.Options{Addr: evaltest.StartT(t, evaltest.Options{}).Addr})
	defer client.Close()
	newPool := func(name string) *Pool {
		p, err := New(client, Options{Name: name, LeaseGrace: testGrace})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	lifecycle(t, newPool("first")) // loads every script through EVAL-on-NOSCRIPT
	for name, s := range lua.All {
		if ok, err := s.Exists(t.Context(), client).Result(); err != nil || !ok[0] {
			t.Errorf("script %s not cached after use: %v, %v", name, ok, err)
		}
	}
	if err := client.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	p := newPool("second")
	for name, s := range lua.All {
		err := s.EvalSha(t.Context(), client, p.script).Err()
		if err == nil || !redis.HasErrorPrefix(err, "NOSCRIPT") {
			t.Fatalf("EVALSHA %s after SCRIPT FLUSH: err = %v, want NOSCRIPT", name, err)
		}
	}
	lifecycle(t, p)
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
		p, err := New(c, Options{Name: fmt.Sprintf("pool-%d", i), LeaseGrace: testGrace})
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
			c.HSet(ctx, k.Leases(), "http://e1", lease("x"))
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
				c.HSet(ctx, k.Leases(), u, lease("x"))
				c.ZAdd(ctx, k.Deadlines(), redis.Z{Score: 1e15, Member: u})
			}
			return c.HSet(ctx, k.Holders(), "x", "http://e1").Err()
		}, "invariant 3: http://e1: eval x holds 2 executors: [http://e1 http://e2]"},
		{"draining but idle", func(ctx context.Context, c *redis.Client, k keys.Pool) error {
			return c.SAdd(ctx, k.Draining(), "http://e2").Err()
		}, "invariant 2: http://e2: draining but not leased: should have been removed"},
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

// TestForeignDataChangesNothing puts data of the wrong type under each key
// of a working pool in turn: every operation that touches that key fails with
// ErrForeignData (or Redis's WRONGTYPE, for a typed read before any write)
// and leaves every key as it was. The epoch is left out: only its presence
// counts. Acquire and release touch only what their path needs (a TYPE
// check costs a call into Redis on the hot path), so each is run on pools in
// the states that send it down each path, naming what it touches there.
func TestForeignDataChangesNothing(t *testing.T) {
	t.Parallel()
	readByStatus := []string{"executors", "available", "leases", "deadlines", "holders", "draining", "fence", "instances", "waiters", "waiting", "quarantine", "labelsets"}
	// released is what a release by the lease's holder touches whatever the
	// pool's state: the lease, its holder, the executor and its record, the
	// history and the released tokens.
	released := []string{"executors", "leases", "deadlines", "holders", "draining", "quarantine", "history", "released"}
	with := func(base []string, more ...string) []string { return append(slices.Clone(base), more...) }
	type op struct {
		run func(p *Pool, held Lease) error
		// touches is the keys the operation reads or writes on each state
		// of the pool, when not all (nil); it runs only over those, and
		// only on the states named, when any is.
		touches map[string][]string
	}
	all := func(states ...string) map[string][]string {
		m := map[string][]string{}
		for _, s := range states {
			m[s] = nil
		}
		return m
	}
	const idle, saturated, draining, lingering, stray, expired, failing, labelled = "idle", "saturated", "draining", "lingering", "stray", "expired", "failing", "labelled"
	// every is every key but the epoch and the avoid list: what an acquire
	// may touch when it reclaims an expired lease or ends its own.
	every := []string{"executors", "available", "leases", "deadlines", "holders", "draining", "fence", "fence value", "instances", "waiters", "waiting", "quarantine", "labelsets", "cancelled", "history"}
	ops := map[string]op{
		"register": {run: func(p *Pool, _ Lease) error {
			_, err := p.Register(t.Context(), Executor{URL: "http://new"})
			return err
		}, touches: all(idle)},
		"register many": {run: func(p *Pool, _ Lease) error {
			_, err := p.Register(t.Context(), Executor{URL: "http://n1"}, Executor{URL: "http://n2"})
			return err
		}, touches: all(idle)},
		"deregister": {run: func(p *Pool, _ Lease) error { _, err := p.Deregister(t.Context(), "http://e1"); return err }, touches: all(idle)},
		"acquire": {run: func(p *Pool, _ Lease) error { _, err := p.Acquire(t.Context(), "eval-x", time.Minute); return err },
			touches: map[string][]string{
				idle:      {"executors", "available", "leases", "deadlines", "holders", "draining", "fence", "fence value", "waiters", "quarantine", "avoid", "cancelled"},
				saturated: {"available", "deadlines", "holders", "avoid", "cancelled"},
				stray:     {"executors", "available", "leases", "deadlines", "holders", "draining", "fence", "fence value", "waiters", "waiting", "quarantine", "avoid", "cancelled"},
				expired:   with(every, "avoid"),
			}},
		"acquire requiring labels": {run: func(p *Pool, _ Lease) error {
			_, err := p.AcquireWith(t.Context(), "eval-x", time.Minute, AcquireArgs{Require: map[string]string{"gpu": "a100"}})
			return err
		}, touches: map[string][]string{
			labelled: {"executors", "available", "leases", "deadlines", "holders", "draining", "fence", "fence value", "quarantine", "avoid", "cancelled", "labelsets"},
		}},
		"acquire by the holder": {run: func(p *Pool, _ Lease) error { _, err := p.Acquire(t.Context(), "eval-a", time.Minute); return err },
			touches: map[string][]string{
				idle:     {"executors", "leases", "deadlines", "holders", "draining", "fence", "fence value", "quarantine", "avoid", "cancelled", "released"},
				draining: with(every, "avoid"),
			}},
		"acquire or wait": {run: func(p *Pool, _ Lease) error {
			_, err := p.AcquireOrWait(t.Context(), "eval-x", time.Minute, Wait{Wake: p.WakeKey("w"), For: time.Minute})
			return err
		}, touches: map[string][]string{saturated: {"available", "deadlines", "holders", "avoid", "cancelled", "waiters", "waiting"}}},
		"acquire by a waiter": {run: func(p *Pool, _ Lease) error {
			_, err := p.AcquireOrWait(t.Context(), "eval-w", time.Minute, Wait{Wake: p.WakeKey("w"), For: time.Minute})
			return err
		}, touches: map[string][]string{
			saturated: {"available", "deadlines", "holders", "avoid", "cancelled", "waiters", "waiting"},
			lingering: {"executors", "available", "leases", "deadlines", "holders", "draining", "fence", "waiters", "waiting", "quarantine", "avoid", "cancelled"},
		}},
		"renew": {run: func(p *Pool, held Lease) error {
			_, err := p.Renew(t.Context(), held, time.Minute)
			return err
		}, touches: map[string][]string{idle: {"leases", "deadlines"}}},
		"release": {run: func(p *Pool, held Lease) error { _, err := p.Release(t.Context(), held, "test"); return err },
			touches: map[string][]string{
				idle:      with(released, "available", "waiters"),
				saturated: with(released, "available", "waiters", "waiting", "fence", "fence value"),
				draining:  with(released, "instances", "labelsets"),
			}},
		"release unavailable": {run: func(p *Pool, held Lease) error {
			_, err := p.ReleaseWith(t.Context(), held, ReleaseArgs{Path: "test", Verdict: VerdictUnavailable, Retrying: true})
			return err
		}, touches: map[string][]string{
			idle:    with(released, "available", "waiters", "avoid"),
			failing: with(released, "available", "avoid"),
		}},
		"release stale": {run: func(p *Pool, held Lease) error {
			_, err := p.ReleaseWith(t.Context(), Lease{URL: held.URL, Token: "t"}, ReleaseArgs{Path: "test", Designed: true})
			return err
		}, touches: map[string][]string{idle: {"executors", "leases", "released"}}},
		"release of a free executor": {run: func(p *Pool, _ Lease) error {
			_, err := p.Release(t.Context(), Lease{URL: "http://e2", Token: "t"}, "test")
			return err
		}, touches: map[string][]string{idle: {"executors", "leases", "available"}}},
		"leave": {run: func(p *Pool, held Lease) error {
			_, _, err := p.Leave(t.Context(), held.EvalID, held.Token)
			return err
		}, touches: all(idle)},
		"reap": {run: func(p *Pool, _ Lease) error { _, err := p.Reap(t.Context()); return err }, touches: all(idle)},
		"counts": {run: func(p *Pool, _ Lease) error { _, err := p.Counts(t.Context()); return err },
			touches: map[string][]string{idle: {"executors", "available", "leases", "deadlines", "draining", "waiting", "quarantine"}}},
		"relabel": {run: func(p *Pool, _ Lease) error {
			_, err := p.Relabel(t.Context(), "http://e1", map[string]string{"gpu": "a100"})
			return err
		}, touches: all(idle)},
		"quarantine": {run: func(p *Pool, _ Lease) error {
			_, err := p.Quarantine(t.Context(), "http://e3", ReasonOperator)
			return err
		}, touches: all(idle)},
		// Status and Check read every key but the avoid list.
		"status": {run: func(p *Pool, _ Lease) error { _, err := p.Status(t.Context()); return err }, touches: map[string][]string{idle: readByStatus}},
		"check":  {run: func(p *Pool, _ Lease) error { _, err := p.Check(t.Context()); return err }, touches: map[string][]string{idle: readByStatus}},
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
			if _, err := p.AcquireOrWait(t.Context(), "eval-w", time.Minute, Wait{Wake: p.WakeKey("w"), For: time.Minute}); !errors.Is(err, ErrWaiting) {
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
	suffixes := []string{"executors", "available", "leases", "deadlines", "holders", "draining", "fence", "epoch", "instances", "waiters", "waiting", "quarantine", "avoid", "labelsets", "cancelled", "history", "released"}
	// The fence is also foreign as a string INCR refuses: one with a
	// leading zero, or at the int64 limit. Only what counts the fence
	// touches its value ("fence value"): status and check read its type.
	fenceStrings := map[string]string{"fence 007": "007", "fence at the limit": "9223372036854775807"}
	for state, prepare := range states {
		for i, suffix := range append(slices.Clone(suffixes), slices.Sorted(maps.Keys(fenceStrings))...) {
			if suffix == "epoch" {
				continue
			}
			touched := suffix
			if _, ok := fenceStrings[suffix]; ok {
				i, touched = slices.Index(suffixes, "fence"), "fence value"
			}
			t.Run(state+"/"+suffix, func(t *testing.T) {
				t.Parallel()
				p, b := setup(t, "http://e1", "http://e2", "http://e3")
				held := acquire(t, p, "eval-a", time.Minute)
				prepare(t, p)
				key := p.script[i]
				if err := b.client.Del(t.Context(), key).Err(); err != nil {
					t.Fatal(err)
				}
				foreign := func() error { return b.client.Set(t.Context(), key, "not ours", 0).Err() }
				if suffix == "fence" { // the fence is a string: a list is foreign to it
					foreign = func() error { return b.client.LPush(t.Context(), key, "not ours").Err() }
				}
				if v, ok := fenceStrings[suffix]; ok {
					foreign = func() error { return b.client.Set(t.Context(), key, v, 0).Err() }
				}
				if err := foreign(); err != nil {
					t.Fatal(err)
				}
				before := dumpKeys(t, b.client, p.Keys())
				for name, o := range ops {
					touches, ok := o.touches[state]
					if !ok || touches != nil && !slices.Contains(touches, touched) {
						continue
					}
					err := o.run(p, held)
					if err == nil || !errors.Is(err, ErrForeignData) && !strings.Contains(err.Error(), "WRONGTYPE") {
						t.Errorf("%s over a foreign %s: err = %v, want ErrForeignData", name, suffix, err)
					}
					if err != nil && strings.Contains(err.Error(), "\n") {
						t.Errorf("%s: error is not one line: %q", name, err)
					}
				}
				if after := dumpKeys(t, b.client, p.Keys()); !maps.Equal(before, after) {
					t.Fatalf("operations over foreign data changed the pool:\nbefore %v\nafter  %v", before, after)
				}
			})
		}
	}
}

func dumpKeys(t *testing.T, c *redis.Client, keys []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range keys {
		v, err := c.Dump(t.Context(), k).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		out[k] = v
	}
	return out
}
