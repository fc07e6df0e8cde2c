package pool

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/lua"
)

// State is where an executor is in its life.
type State string

// Executor states.
const (
	// StateAvailable: in the available set, waiting for an eval.
	StateAvailable State = "available"
	// StateLeased: held by an eval whose lease is live.
	StateLeased State = "leased"
	// StateExpired: its lease passed its deadline; the next Reap or Acquire
	// reclaims it.
	StateExpired State = "expired"
	// StateDraining: deregistered while leased; it leaves when the lease ends.
	StateDraining State = "draining"
	// StateQuarantined: out of service and idle; a health probe or an
	// operator returns it. (A quarantined executor still serving its eval
	// is leased, with its Quarantine set.)
	StateQuarantined State = "quarantined"
	// StateLost: registered, yet neither available nor leased. Check reports
	// it; it never happens unless keys were deleted or evicted, or something
	// other than evalpool wrote to them. Registering it again repairs it.
	StateLost State = "lost"
)

// Status is a consistent snapshot of the whole pool, read in one MULTI.
type Status struct {
	Pool string    `json:"pool"`
	Now  time.Time `json:"now"`
	// Fence is the highest fencing number handed out so far, to any
	// executor.
	Fence int64 `json:"fence"`
	// Epoch is the pool's marker, written by its first Register; empty when
	// the pool was never created or its data was lost.
	Epoch     string           `json:"epoch"`
	Counts    map[State]int    `json:"counts"`
	Executors []ExecutorStatus `json:"executors"`
	// Waiters are the evals waiting for an executor, first in line first.
	Waiters []WaiterStatus `json:"waiters"`
}

// WaiterStatus is an eval in the wait list. An operator tells it from a
// running eval by this: Asynq shows both as active.
type WaiterStatus struct {
	EvalID string `json:"eval_id"`
	// Position is its place in line, 1 first.
	Position int `json:"position"`
	// Since is when it first began to wait: hand-backs keep it.
	Since time.Time `json:"since"`
	// Until is when its entry lapses unless its next attempt renews it;
	// zero when the entry is unreadable.
	Until time.Time `json:"until,omitzero"`
}

type waiterRecord struct {
	Token string `json:"token"`
	TTL   int64  `json:"ttl"`
	Wake  string `json:"wake"`
	Until int64  `json:"expires"`
	// Set is the label set the eval requires; empty for any executor.
	Set string `json:"set"`
}

// ExecutorStatus is one executor in a Status.
type ExecutorStatus struct {
	URL    string            `json:"url"`
	State  State             `json:"state"`
	Labels map[string]string `json:"labels,omitempty"`
	// InstanceID is the executor's own ID, when it reported one.
	InstanceID string    `json:"instance_id,omitempty"`
	AddedAt    time.Time `json:"added_at"`
	// InAvailable counts the executor's entries in the available set: 0 or
	// 1, by construction (a set cannot hold a member twice).
	InAvailable int `json:"in_available"`
	// LastRelease is when it last became available (released, reclaimed or
	// registered); zero when unknown.
	LastRelease time.Time `json:"last_release,omitzero"`
	// Releases counts the releases that returned it; DoubleReleases the
	// releases it absorbed (already_in_pool or stale_lease); StaleReleases
	// those of them that found it leased by another eval.
	Releases       int64 `json:"releases"`
	DoubleReleases int64 `json:"double_releases"`
	StaleReleases  int64 `json:"stale_releases"`
	// Duplicates counts the releases it absorbed that were a released
	// lease's other path (ReleaseResult.Duplicate): expected, not double.
	Duplicates int64 `json:"duplicates"`
	// Fails counts its calls in a row that found it unavailable; Passed
	// and Failed its graded evals.
	Fails  int64 `json:"fails"`
	Passed int64 `json:"passed"`
	Failed int64 `json:"failed"`
	// Fence is its last grant's fencing number; its next is higher.
	Fence int64 `json:"fence,omitempty"`
	// Quarantine is set while it is out of service.
	Quarantine *QuarantineStatus `json:"quarantine,omitempty"`
	Lease      *LeaseStatus      `json:"lease,omitempty"`
	// Corrupt says which of its records could not be read, if any: Status
	// shows such an executor instead of failing, and Check reports it.
	Corrupt string `json:"corrupt,omitempty"`
}

// PassRate is the share of its graded evals that passed; -1 before any.
func (e ExecutorStatus) PassRate() float64 {
	if e.Passed+e.Failed == 0 {
		return -1
	}
	return float64(e.Passed) / float64(e.Passed+e.Failed)
}

// QuarantineStatus is why and since when an executor is out of service.
type QuarantineStatus struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	// NextProbe is when its next health probe is due; Probes how many
	// found it unhealthy so far.
	NextProbe time.Time `json:"next_probe"`
	Probes    int64     `json:"probes"`
}

// LeaseStatus is a lease as Status shows it: without its token, which is the
// capability to release the executor.
type LeaseStatus struct {
	EvalID     string    `json:"eval_id"`
	Fence      int64     `json:"fence"`
	AcquiredAt time.Time `json:"acquired_at"`
	Deadline   time.Time `json:"deadline"`
}

// Violation is a broken invariant found by Check.
type Violation struct {
	// Invariant is the number of the invariant in docs/design.md.
	Invariant int    `json:"invariant"`
	Executor  string `json:"executor,omitempty"`
	Problem   string `json:"problem"`
}

func (v Violation) String() string {
	if v.Executor == "" {
		return fmt.Sprintf("invariant %d: %s", v.Invariant, v.Problem)
	}
	return fmt.Sprintf("invariant %d: %s: %s", v.Invariant, v.Executor, v.Problem)
}

type leaseRecord struct {
	Token          string `json:"token"`
	EvalID         string `json:"eval_id"`
	Fence          int64  `json:"fence"`
	AcquiredAt     int64  `json:"acquired_at"`
	AvailableSince int64  `json:"available_since"`
}

type executorRecord struct {
	AddedAt          int64             `json:"added_at"`
	InstanceID       string            `json:"instance_id"`
	Labels           map[string]string `json:"labels"`
	Fence            int64             `json:"fence"`
	Releases         int64             `json:"releases"`
	DoubleReleases   int64             `json:"double_releases"`
	StaleReleases    int64             `json:"stale_releases"`
	Duplicates       int64             `json:"duplicates"`
	Fails            int64             `json:"fails"`
	Passed           int64             `json:"passed"`
	Failed           int64             `json:"failed"`
	QuarantinedAt    int64             `json:"quarantined_at"`
	Draining         int64             `json:"draining"`
	QuarantineReason string            `json:"quarantine_reason"`
	Probes           int64             `json:"probes"`
}

// snapshot is the raw content of the pool's keys at one instant.
type snapshot struct {
	// now is the pool's time (pool.Tick): the times the scripts write are
	// in it.
	now       time.Time
	clock     map[string]string
	executors map[string]string
	available map[string]float64
	leases    map[string]string
	deadlines map[string]float64
	holders   map[string]string
	draining  map[string]bool
	fence     int64
	epoch     string
	instances map[string]string
	waiters   []redis.Z
	waiting   map[string]string
	// quarantine is url -> its next probe (ms); labelled is label set ->
	// registered executors with exactly those labels; setAvailable is the
	// available index of each of those sets, setWaiters the wait list of
	// each set they serve (a subset of one), waiters those of every set,
	// merged.
	quarantine   map[string]float64
	labelled     map[string]string
	setAvailable map[string]map[string]float64
	setWaiters   map[string][]redis.Z
}

// leasesOf is url -> the lease JSON of each executor record that holds one.
func leasesOf(executors map[string]string) map[string]string {
	leases := map[string]string{}
	for u, raw := range executors {
		var rec struct {
			Lease json.RawMessage `json:"lease"`
		}
		if json.Unmarshal([]byte(raw), &rec) == nil && len(rec.Lease) > 0 && string(rec.Lease) != "null" {
			leases[u] = string(rec.Lease)
		}
	}
	return leases
}

func (p *Pool) snapshot(ctx context.Context) (*snapshot, error) {
	// The label sets name keys of their own: read them first, then
	// everything in one step, and again if the sets changed in between.
	sets, err := p.client.HKeys(ctx, p.keys.Labelled()).Result()
	if err != nil {
		return nil, fmt.Errorf("pool: read pool %s: %w", p.name, scriptErr(err))
	}
	for range 5 {
		s, again, err := p.snapshotOf(ctx, sets)
		if err != nil || !again {
			return s, err
		}
		sets = slices.Collect(maps.Keys(s.labelled))
	}
	return nil, fmt.Errorf("pool: read pool %s: its label sets kept changing", p.name)
}

// snapshotOf reads the pool in one atomic step (lua.Read, which a Redis at
// maxmemory still serves), the indexes of the label sets named among it;
// again is true when the sets are not those.
func (p *Pool) snapshotOf(ctx context.Context, sets []string) (s *snapshot, again bool, err error) {
	var cmds []redis.Cmder
	hash := func(key string) *redis.MapStringStringCmd {
		c := redis.NewMapStringStringCmd(ctx, "hgetall", key)
		cmds = append(cmds, c)
		return c
	}
	zset := func(key string) *redis.ZSliceCmd {
		c := redis.NewZSliceCmd(ctx, "zrange", key, 0, -1, "withscores")
		cmds = append(cmds, c)
		return c
	}
	str := func(key string) *redis.StringCmd {
		c := redis.NewStringCmd(ctx, "get", key)
		cmds = append(cmds, c)
		return c
	}
	k := p.keys
	executors, available, deadlines := hash(k.Executors()), zset(k.Available()), zset(k.Deadlines())
	holders := hash(k.Holders())
	draining := redis.NewStringSliceCmd(ctx, "smembers", k.Draining())
	cmds = append(cmds, draining)
	fence, epoch, instances, waiters, waiting := str(k.Fence()), str(k.Epoch()), hash(k.Instances()), zset(k.Waiters()), hash(k.Waiting())
	quarantine, labelled := zset(k.Quarantine()), hash(k.Labelled())
	setAvailable, setWaiters := map[string]*redis.ZSliceCmd{}, map[string]*redis.ZSliceCmd{}
	for _, set := range sets {
		setAvailable[set] = zset(k.LabelledFor(set))
		for _, served := range labels.Subsets(set) {
			if setWaiters[served] == nil {
				setWaiters[served] = zset(k.WaitersFor(served))
			}
		}
	}
	clock := hash(k.Clock())
	now := redis.NewTimeCmd(ctx, "time")
	cmds = append(cmds, now)
	err = lua.Read(ctx, p.client, p.script, cmds...)
	if err == nil {
		// The fence's and the epoch's GET answer nil before the first
		// acquire and register: no error, unless another command failed.
		for _, c := range cmds {
			if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
				err = e
				break
			}
		}
	}
	if err != nil {
		return nil, false, fmt.Errorf("pool: read pool %s: %w", p.name, scriptErr(err))
	}
	s = &snapshot{
		now:          poolNow(clock.Val()["skew"], now.Val()),
		clock:        clock.Val(),
		executors:    executors.Val(),
		available:    zmap(available.Val()),
		leases:       leasesOf(executors.Val()),
		deadlines:    zmap(deadlines.Val()),
		holders:      holders.Val(),
		draining:     map[string]bool{},
		epoch:        epoch.Val(),
		instances:    instances.Val(),
		waiters:      waiters.Val(),
		waiting:      waiting.Val(),
		quarantine:   zmap(quarantine.Val()),
		labelled:     labelled.Val(),
		setAvailable: map[string]map[string]float64{},
		setWaiters:   map[string][]redis.Z{},
	}
	for set, c := range setAvailable {
		s.setAvailable[set] = zmap(c.Val())
	}
	for set, c := range setWaiters {
		s.setWaiters[set] = c.Val()
		s.waiters = append(s.waiters, c.Val()...)
	}
	slices.SortStableFunc(s.waiters, func(a, b redis.Z) int { return cmp.Compare(a.Score, b.Score) })
	for _, u := range draining.Val() {
		s.draining[u] = true
	}
	if v := fence.Val(); v != "" {
		if s.fence, err = strconv.ParseInt(v, 10, 64); err != nil {
			return nil, false, fmt.Errorf("%w: fence %q is not a number", ErrForeignData, v)
		}
	}
	read := slices.Sorted(slices.Values(sets))
	return s, !slices.Equal(read, slices.Sorted(maps.Keys(s.labelled))), nil
}

func zmap(zs []redis.Z) map[string]float64 {
	m := make(map[string]float64, len(zs))
	for _, z := range zs {
		m[z.Member.(string)] = z.Score
	}
	return m
}

func msTime(ms float64) time.Time { return time.UnixMilli(int64(ms)) }

// Counts is how many executors are in each state. Available, Leased,
// Draining, Quarantined and Lost are exclusive and add up to Registered.
type Counts struct {
	Registered int64 `json:"registered"`
	Available  int64 `json:"available"`
	// Leased counts live and expired leases of executors not draining.
	Leased int64 `json:"leased"`
	// Expired counts the leases past their deadline, in any state.
	Expired  int64 `json:"expired"`
	Draining int64 `json:"draining"`
	// Quarantined counts the executors out of service and idle.
	Quarantined int64 `json:"quarantined"`
	Lost        int64 `json:"lost"`
	// Waiters is how many evals are in the wait lists.
	Waiters int64 `json:"waiters"`
}

// Counts reads the pool's state counts in O(log N), for gauges.
func (p *Pool) Counts(ctx context.Context) (Counts, error) {
	v, err := lua.Counts.Run(ctx, p.client, p.script).Int64Slice()
	if err != nil {
		return Counts{}, fmt.Errorf("pool: counts of %s: %w", p.name, scriptErr(err))
	}
	return Counts{Registered: v[0], Available: v[1], Leased: v[2], Expired: v[3], Draining: v[4], Waiters: v[5], Quarantined: v[6], Lost: v[7]}, nil
}

// Status reads the whole pool at one instant. It is O(pool size): for people
// and dashboards, not for the hot path.
func (p *Pool) Status(ctx context.Context) (*Status, error) {
	s, err := p.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	st := &Status{Pool: p.name, Now: s.now, Fence: s.fence, Epoch: s.epoch, Counts: map[State]int{}}
	for _, u := range slices.Sorted(maps.Keys(s.executors)) {
		e := executorStatus(s, u)
		st.Fence = max(st.Fence, e.Fence)
		st.Counts[e.State]++
		st.Executors = append(st.Executors, e)
	}
	for i, z := range s.waiters {
		w := WaiterStatus{EvalID: z.Member.(string), Position: i + 1, Since: time.UnixMicro(int64(z.Score))}
		var rec waiterRecord
		if json.Unmarshal([]byte(s.waiting[w.EvalID]), &rec) == nil {
			w.Until = time.UnixMilli(rec.Until)
		}
		st.Waiters = append(st.Waiters, w)
	}
	return st, nil
}

// Check verifies the pool's invariants (docs/design.md) on one snapshot and
// returns every violation, sorted; none means the pool is whole. It is
// O(pool size). A pool with keys of another type than its layout's is
// reported for those alone (invariant 10): the snapshot's typed reads
// cannot read the rest.
func (p *Pool) Check(ctx context.Context) ([]Violation, error) {
	if older, err := p.olderLayout(ctx); err != nil || older != "" {
		return []Violation{{Invariant: 5, Problem: older}}, err
	}
	vs, err := p.checkTypes(ctx)
	if err != nil || len(vs) > 0 {
		return vs, err
	}
	s, err := p.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	add := func(inv int, url, format string, args ...any) {
		vs = append(vs, Violation{Invariant: inv, Executor: url, Problem: fmt.Sprintf(format, args...)})
	}
	switch {
	case s.epoch == "" && len(s.executors) > 0:
		add(5, "", "the pool's epoch marker is missing but %d executors are registered: the marker alone was evicted; the next acquire, `pool add` or worker writes a new one", len(s.executors))
	case s.epoch == "":
		add(5, "", "the pool's epoch marker is missing: the pool was never created, or its data was lost (FLUSHALL, eviction, a restart without persistence)")
	}
	if v, ok := rewound(s.clock, s.now); ok {
		vs = append(vs, v)
	}
	byInstance := map[string][]string{}
	for u, raw := range s.executors {
		var rec executorRecord
		if err := json.Unmarshal([]byte(raw), &rec); err != nil {
			add(2, u, "unreadable executor record %q", raw)
			continue
		}
		if rec.InstanceID != "" {
			byInstance[rec.InstanceID] = append(byInstance[rec.InstanceID], u)
		}
		// A release reads the quarantine and the drain from the record alone.
		if _, q := s.quarantine[u]; q != (rec.QuarantinedAt != 0) {
			add(7, u, "quarantine schedule and record disagree: scheduled %v, quarantined_at %d", q, rec.QuarantinedAt)
		}
		if s.draining[u] != (rec.Draining != 0) {
			add(2, u, "draining set and record disagree: in the set %v, record draining %d", s.draining[u], rec.Draining)
		}
	}
	for id, urls := range byInstance {
		if len(urls) > 1 {
			slices.Sort(urls)
			add(3, urls[0], "one executor (instance %s) registered under %d URLs: %v", id, len(urls), urls)
		}
	}
	for u := range s.executors {
		_, avail := s.available[u]
		_, leased := s.leases[u]
		_, q := s.quarantine[u]
		switch {
		case avail && leased:
			add(1, u, "both available and leased")
		case !avail && !leased && !q:
			add(4, u, "lost: registered but neither available, leased nor quarantined")
		case avail && q:
			add(7, u, "both available and quarantined")
		}
	}
	for u := range s.quarantine {
		if _, ok := s.executors[u]; !ok {
			add(7, u, "quarantined but not registered")
		}
	}
	checkLabelIndexes(s, add)
	for u := range s.available {
		if _, ok := s.executors[u]; !ok {
			add(2, u, "available but not registered")
		}
	}
	evals := map[string][]string{}
	for u, raw := range s.leases {
		if _, ok := s.executors[u]; !ok {
			add(2, u, "leased but not registered")
		}
		if _, ok := s.deadlines[u]; !ok {
			add(2, u, "lease without a deadline")
		}
		var lr leaseRecord
		if err := json.Unmarshal([]byte(raw), &lr); err != nil || lr.Token == "" || lr.EvalID == "" {
			add(2, u, "unreadable lease record %q", raw)
			continue
		}
		evals[lr.EvalID] = append(evals[lr.EvalID], u)
		if s.holders[lr.EvalID] != u {
			add(3, u, "lease of eval %s missing from the holders index", lr.EvalID)
		}
	}
	for u := range s.deadlines {
		if _, ok := s.leases[u]; !ok {
			add(2, u, "deadline without a lease")
		}
	}
	for id, urls := range evals {
		if len(urls) > 1 {
			slices.Sort(urls)
			add(3, urls[0], "eval %s holds %d executors: %v", id, len(urls), urls)
		}
	}
	for id, u := range s.holders {
		if !slices.Contains(evals[id], u) {
			add(3, u, "holders index names eval %s, which holds no lease on it", id)
		}
	}
	for u := range s.draining {
		if _, ok := s.leases[u]; !ok {
			add(2, u, "draining but not leased: should have been removed")
		}
		if _, ok := s.executors[u]; !ok {
			add(2, u, "draining but not registered")
		}
	}
	// The wait list: an entry in both keys, and never a live waiter while an
	// executor sits free (every path that frees one hands it to the oldest
	// live waiter in the same script).
	live := 0
	inLine := map[string]bool{}
	for _, z := range s.waiters {
		id := z.Member.(string)
		inLine[id] = true
		var rec waiterRecord
		if err := json.Unmarshal([]byte(s.waiting[id]), &rec); err != nil {
			add(6, "", "waiter %s has no readable entry", id)
			continue
		}
		if rec.Until > s.now.UnixMilli() && rec.Set == "" {
			live++
		}
	}
	for id := range s.waiting {
		if !inLine[id] {
			add(6, "", "waiter entry of %s is not in line", id)
		}
	}
	if live > 0 && len(s.available) > 0 {
		add(6, "", "%d live waiters while %d executors are available", live, len(s.available))
	}
	for required, line := range s.setWaiters {
		free := 0
		for set, members := range s.setAvailable {
			if labels.Serves(set, required) {
				free += len(members)
			}
		}
		if n := liveWaiters(s, line); n > 0 && free > 0 {
			add(6, "", "%d live waiters for %s while %d executors with it are available", n, required, free)
		}
	}
	slices.SortFunc(vs, func(a, b Violation) int {
		return cmp.Or(cmp.Compare(a.Invariant, b.Invariant),
			strings.Compare(a.Executor, b.Executor), strings.Compare(a.Problem, b.Problem))
	})
	return vs, nil
}

// liveWaiters counts the entries of a wait list that have not lapsed.
func liveWaiters(s *snapshot, line []redis.Z) int {
	n := 0
	for _, z := range line {
		var rec waiterRecord
		if json.Unmarshal([]byte(s.waiting[z.Member.(string)]), &rec) == nil && rec.Until > s.now.UnixMilli() {
			n++
		}
	}
	return n
}

// checkLabelIndexes checks invariant 8: an available executor with labels
// is in the index of its label set, under the same score, and in no other;
// labelled counts the registered executors of each set; a waiter waits in
// the list of the set it requires.
func checkLabelIndexes(s *snapshot, add func(inv int, url, format string, args ...any)) {
	counts := map[string]int64{}
	setOf := func(u string) (string, bool) {
		var rec executorRecord
		if json.Unmarshal([]byte(s.executors[u]), &rec) != nil {
			return "", false
		}
		return labels.Name(rec.Labels), true
	}
	for u := range s.executors {
		set, ok := setOf(u)
		if !ok || set == "" {
			continue
		}
		counts[set]++
		if since, avail := s.available[u]; avail {
			if got, ok := s.setAvailable[set][u]; !ok || got != since {
				add(8, u, "available but missing from the index of its label set %s", set)
			}
		}
	}
	for set, members := range s.setAvailable {
		for u := range members {
			_, avail := s.available[u]
			if have, ok := setOf(u); !ok || !avail || have != set {
				add(8, u, "in the index of label set %s, but not an available executor with it", set)
			}
		}
	}
	for set, raw := range s.labelled {
		if n, err := strconv.ParseInt(raw, 10, 64); err != nil || n != counts[set] {
			add(8, "", "label set %s counts %s registered executors, %d have it", set, raw, counts[set])
		}
	}
	for set, n := range counts {
		if _, ok := s.labelled[set]; !ok {
			add(8, "", "label set %s of %d registered executors is not counted", set, n)
		}
	}
	for set, line := range s.setWaiters {
		for _, z := range line {
			var rec waiterRecord
			if json.Unmarshal([]byte(s.waiting[z.Member.(string)]), &rec) == nil && rec.Set != set {
				add(8, "", "waiter %s requires %q yet waits for %s", z.Member, rec.Set, set)
			}
		}
	}
}

// LeaseSpan is a lease that ended: on which executor, for which eval, from
// when to when, and how it ended (released, reclaimed, left, drained).
type LeaseSpan struct {
	URL    string    `json:"url"`
	EvalID string    `json:"eval_id"`
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	How    string    `json:"how"`
}

// History returns the leases that ended since since, newest first, at most
// limit of them (the pool keeps the last 100,000), of the executors in urls
// only when urls is not empty: a timeline of a page of executors reads a
// bounded slice of the history, never the whole pool.
func (p *Pool) History(ctx context.Context, since time.Time, limit int, urls ...string) ([]LeaseSpan, error) {
	msgs, err := p.client.XRevRangeN(ctx, p.keys.History(), "+", strconv.FormatInt(since.UnixMilli(), 10), int64(limit)).Result()
	if err != nil {
		return nil, fmt.Errorf("pool: history of %s: %w", p.name, err)
	}
	var spans []LeaseSpan
	for _, m := range msgs {
		s := LeaseSpan{EvalID: fmt.Sprint(m.Values["eval"]), How: fmt.Sprint(m.Values["how"])}
		s.URL, _ = m.Values["url"].(string)
		if len(urls) > 0 && !slices.Contains(urls, s.URL) {
			continue
		}
		ms, _, _ := strings.Cut(m.ID, "-")
		end, _ := strconv.ParseInt(ms, 10, 64)
		from, _ := strconv.ParseInt(fmt.Sprint(m.Values["from"]), 10, 64)
		s.From, s.To = time.UnixMilli(from), time.UnixMilli(end)
		spans = append(spans, s)
	}
	return spans, nil
}

// executorStatus is executor u as the snapshot s shows it.
func executorStatus(s *snapshot, u string) ExecutorStatus {
	e := ExecutorStatus{URL: u}
	var rec executorRecord
	if err := json.Unmarshal([]byte(s.executors[u]), &rec); err == nil {
		e.AddedAt, e.Labels, e.InstanceID = time.UnixMilli(rec.AddedAt), rec.Labels, rec.InstanceID
		e.Releases, e.DoubleReleases, e.StaleReleases = rec.Releases, rec.DoubleReleases, rec.StaleReleases
		e.Fails, e.Passed, e.Failed, e.Duplicates = rec.Fails, rec.Passed, rec.Failed, rec.Duplicates
		e.Fence = rec.Fence
	} else {
		e.Corrupt = "unreadable executor record"
	}
	if next, q := s.quarantine[u]; q {
		e.Quarantine = &QuarantineStatus{Reason: rec.QuarantineReason, Since: time.UnixMilli(rec.QuarantinedAt), NextProbe: msTime(next), Probes: rec.Probes}
	}
	since, avail := s.available[u]
	if avail {
		e.InAvailable = 1
		e.LastRelease = msTime(since)
	}
	var lr leaseRecord
	raw, leased := s.leases[u]
	if leased {
		if err := json.Unmarshal([]byte(raw), &lr); err != nil {
			e.Corrupt = "unreadable lease record"
		}
		e.Lease = &LeaseStatus{
			EvalID:     lr.EvalID,
			Fence:      lr.Fence,
			AcquiredAt: time.UnixMilli(lr.AcquiredAt),
			Deadline:   msTime(s.deadlines[u]),
		}
		e.LastRelease = time.UnixMilli(lr.AvailableSince)
	}
	switch {
	case s.draining[u]:
		e.State = StateDraining
	case leased && !e.Lease.Deadline.After(s.now):
		e.State = StateExpired
	case leased:
		e.State = StateLeased
	case avail:
		e.State = StateAvailable
	case e.Quarantine != nil:
		e.State = StateQuarantined
	default:
		e.State = StateLost
	}
	return e
}

// Page reads one page of the pool's executors, about count of them from
// cursor (0 to start; the next cursor is 0 after the last page), with the
// counts of every state: O(page) and O(log N), never a read of the whole
// pool, for pages that show 100,000 executors a screen at a time. A page is
// consistent in itself, not with the others (Redis's HSCAN).
func (p *Pool) Page(ctx context.Context, cursor uint64, count int64) ([]ExecutorStatus, uint64, Counts, error) {
	counts, err := p.Counts(ctx)
	if err != nil {
		return nil, 0, Counts{}, err
	}
	kv, next, err := p.client.HScan(ctx, p.keys.Executors(), cursor, "", count).Result()
	if err != nil {
		return nil, 0, Counts{}, fmt.Errorf("pool: page of %s: %w", p.name, err)
	}
	s := &snapshot{executors: map[string]string{}, available: map[string]float64{},
		deadlines: map[string]float64{}, draining: map[string]bool{}, quarantine: map[string]float64{}}
	var urls []string
	for i := 0; i+1 < len(kv); i += 2 {
		urls = append(urls, kv[i])
		s.executors[kv[i]] = kv[i+1]
	}
	s.leases = leasesOf(s.executors)
	type row struct {
		avail, deadline, quarantine *redis.FloatCmd
		draining                    *redis.BoolCmd
	}
	rows := make([]row, len(urls))
	var (
		now  *redis.TimeCmd
		skew *redis.StringCmd
	)
	if _, err := p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, u := range urls {
			rows[i] = row{pipe.ZScore(ctx, p.keys.Available(), u), pipe.ZScore(ctx, p.keys.Deadlines(), u), pipe.ZScore(ctx, p.keys.Quarantine(), u),
				pipe.SIsMember(ctx, p.keys.Draining(), u)}
		}
		skew, now = pipe.HGet(ctx, p.keys.Clock(), "skew"), pipe.Time(ctx)
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, 0, Counts{}, fmt.Errorf("pool: page of %s: %w", p.name, err)
	}
	s.now = poolNow(skew.Val(), now.Val())
	for i, u := range urls {
		r := rows[i]
		if r.avail.Err() == nil {
			s.available[u] = r.avail.Val()
		}
		if r.deadline.Err() == nil {
			s.deadlines[u] = r.deadline.Val()
		}
		if r.quarantine.Err() == nil {
			s.quarantine[u] = r.quarantine.Val()
		}
		s.draining[u] = r.draining.Val()
	}
	slices.Sort(urls)
	out := make([]ExecutorStatus, len(urls))
	for i, u := range urls {
		out[i] = executorStatus(s, u)
	}
	return out, next, counts, nil
}
