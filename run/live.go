package run

import (
	"cmp"
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/keys"
)

// DefaultLiveBytes is Options.LiveBytes's default: 128 MB, a million ends
// of a score and a few metrics.
const DefaultLiveBytes = 128 << 20

// Summarize sums a run up; with against set, it compares it with that
// run, eval key by eval key.
//
// The Store keeps a tally of each run it summed up lately (Options.
// LiveBytes), so that a run summed up again costs the ends since, read from
// the run's log of ends: O(1) reads when none ended, O(ended since) when
// some did, whatever the run's size. The first summary of a run, or one
// after its ends were taken back (Reopen), lost or rewound, reads every
// record, O(run). A comparison is O(both runs) in memory.
func (s *Store) Summarize(ctx context.Context, name, against string) (Summary, error) {
	var sum Summary
	var err error
	if against == "" {
		err = s.live.use(ctx, s, name, func(now *liveRun) error { sum = now.summary(); return nil })
	} else if err = ValidateName(against); err != nil {
		err = fmt.Errorf("compare with %s: %w", against, err)
	} else {
		err = s.live.useBoth(ctx, s, name, against, func(now, before *liveRun) {
			sum = now.summary()
			sum.Compare = now.t.compare(against, before.t)
			measure(sum.Compare, sum, before.t.summary(before.run))
		})
	}
	if err != nil {
		return Summary{}, err
	}
	return sum, nil
}

// liveRuns are the tallies a Store keeps, bounded by the memory they
// take, as estimated.
type liveRuns struct {
	mu   sync.Mutex
	runs map[string]*liveRun
	// bytes is what they take, and max their bound (0: none kept).
	bytes, max int
	clock      uint64
}

// liveRun is a run's tally, and where it stands in the run's log of ends.
type liveRun struct {
	mu  sync.Mutex
	run Run
	t   *tally
	// cursor is the next entry of the log to add, and last the one before
	// it; reopened is the run's
	// count of ends taken back, as of the tally's start; skew is its
	// counts' outcomes less the tally's then: they keep that difference
	// while the tally keeps up.
	cursor   int64
	last     logEntry
	reopened string
	skew     Outcomes
	running  int
	share    Share
	// used, and bytes, what it takes (account), are under liveRuns.mu.
	used  uint64
	bytes int
}

// use runs fn on the run's tally, brought up to date, under its lock.
func (l *liveRuns) use(ctx context.Context, s *Store, name string, fn func(*liveRun) error) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	l.mu.Lock()
	lr := l.runs[name]
	if lr == nil {
		lr = &liveRun{}
		if l.runs == nil {
			l.runs = map[string]*liveRun{}
		}
		if l.max > 0 {
			l.runs[name] = lr
		}
	}
	l.clock++
	lr.used = l.clock
	l.mu.Unlock()

	lr.mu.Lock()
	defer lr.mu.Unlock()
	if err := lr.update(ctx, s, name); err != nil {
		l.forget(name, lr)
		return err
	}
	l.account(name, lr)
	return fn(lr)
}

// useBoth runs fn on the tallies of two runs: an error of b's says
// "compare with b". It locks them in their names' order, so that two
// comparisons of the same runs the other way round do not wait on each
// other.
func (l *liveRuns) useBoth(ctx context.Context, s *Store, a, b string, fn func(a, b *liveRun)) error {
	if a == b {
		return l.use(ctx, s, a, func(lr *liveRun) error { fn(lr, lr); return nil })
	}
	x, y := a, b
	if y < x {
		x, y = y, x
	}
	var inner error
	err := l.use(ctx, s, x, func(lx *liveRun) error {
		inner = l.use(ctx, s, y, func(ly *liveRun) error {
			if x == a {
				fn(lx, ly)
			} else {
				fn(ly, lx)
			}
			return nil
		})
		return nil
	})
	failed := x
	if err == nil {
		err, failed = inner, y
	}
	if err != nil && failed == b {
		return fmt.Errorf("compare with %s: %w", b, err)
	}
	return err
}

// runBytes is what a tally takes besides its ends and its run's meta, so
// that many small runs are bounded as one big one.
const runBytes = 2048

// account notes the memory lr takes, and forgets the runs used longest ago
// while the tallies take more than their bound: the run in use last stays,
// whatever its size.
func (l *liveRuns) account(name string, lr *liveRun) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs[name] != lr {
		return
	}
	bytes := lr.t.bytes + runBytes
	for k, v := range lr.run.Meta {
		bytes += len(k) + len(v) + nameBytes
	}
	l.bytes += bytes - lr.bytes
	lr.bytes = bytes
	for l.bytes > l.max && len(l.runs) > 1 {
		var oldest string
		for n, r := range l.runs {
			if n != name && (oldest == "" || r.used < l.runs[oldest].used) {
				oldest = n
			}
		}
		l.bytes -= l.runs[oldest].bytes
		delete(l.runs, oldest)
	}
}

func (l *liveRuns) forget(name string, lr *liveRun) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.runs[name] == lr {
		l.bytes -= lr.bytes
		delete(l.runs, name)
	}
}

// update brings lr up to the run as Redis has it: the ends logged since
// its cursor, or every record when the tally cannot go on from where it
// stands (another run of its name, ends taken back, a log shorter than the
// cursor or with another entry where its last was, counts that no longer
// agree with it).
func (lr *liveRun) update(ctx context.Context, s *Store, name string) error {
	k := keys.ForRun(name)
	sn := newSnapshot(ctx, k)
	lastKey, lastRec := redis.NewStringCmd(ctx, "lindex", k.Ended(), max(lr.cursor-1, 0)), redis.NewStringCmd(ctx, "hget", k.Done(), lr.last.key)
	r, err := sn.read(ctx, s, name, lastKey, lastRec)
	if err != nil {
		return err
	}
	counts, ended, running := sn.counts, sn.ended, sn.running
	reopened := counts.Val()["reopened"]
	if lr.t == nil || !lr.run.CreatedAt.Equal(r.CreatedAt) || lr.run.Epochs != r.Epochs || lr.run.Size != r.Size || reopened != lr.reopened || ended.Val() < lr.cursor ||
		lr.cursor > 0 && entryOf(lastKey.Val(), lastRec.Val()) != lr.last {
		return lr.rebuild(ctx, s, name)
	}
	for lr.cursor < ended.Val() {
		recs, next, last, err := s.endedSince(ctx, name, lr.cursor, int(min(ended.Val()-lr.cursor, MaxEndedSince)))
		if err != nil {
			return err
		}
		for _, rec := range recs {
			lr.t.add(rec)
		}
		lr.cursor, lr.last = next, last
	}
	if skewOf(counts.Val(), lr.t) != lr.skew {
		return lr.rebuild(ctx, s, name)
	}
	lr.run, lr.running, lr.share = r, int(running.Val()), sn.share.share(r, counts.Val())
	return nil
}

// rebuild makes lr's tally anew from every record of the run, read in one
// step with the log's length, in the order they ended.
func (lr *liveRun) rebuild(ctx context.Context, s *Store, name string) error {
	k := keys.ForRun(name)
	sn := newSnapshot(ctx, k)
	done, lastKey := redis.NewMapStringStringCmd(ctx, "hgetall", k.Done()), redis.NewStringCmd(ctx, "lindex", k.Ended(), -1)
	r, err := sn.read(ctx, s, name, done, lastKey)
	if err != nil {
		return err
	}
	counts, ended, running := sn.counts, sn.ended, sn.running
	type positioned struct {
		rec Record
		pos int64
	}
	recs := make([]positioned, 0, len(done.Val()))
	for key, raw := range done.Val() {
		rec, pos, err := decodeStored(key, raw)
		if err != nil {
			return fmt.Errorf("run %s: %w", name, err)
		}
		recs = append(recs, positioned{rec, pos})
	}
	// Records written before the log (no position) first, by key.
	slices.SortFunc(recs, func(a, b positioned) int { return cmp.Or(cmp.Compare(a.pos, b.pos), cmp.Compare(a.rec.Key, b.rec.Key)) })
	t := newTally(r.Epochs)
	for _, p := range recs {
		t.add(p.rec)
	}
	lr.run, lr.t, lr.cursor, lr.running = r, t, ended.Val(), int(running.Val())
	lr.last = logEntry{}
	if ended.Val() > 0 {
		lr.last = entryOf(lastKey.Val(), done.Val()[lastKey.Val()])
	}
	lr.reopened, lr.skew = counts.Val()["reopened"], skewOf(counts.Val(), t)
	lr.share = sn.share.share(r, counts.Val())
	return nil
}

// snapshot is what a tally reads of its run, in one step with what else
// it needs: its meta, its counts, the length of its log of ends, how many
// evals run, and the rest of its share.
type snapshot struct {
	meta, counts   *redis.MapStringStringCmd
	ended, running *redis.IntCmd
	share          shareRead
}

func newSnapshot(ctx context.Context, k keys.Run) snapshot {
	return snapshot{meta: redis.NewMapStringStringCmd(ctx, "hgetall", k.Meta()), counts: redis.NewMapStringStringCmd(ctx, "hgetall", k.Counts()),
		ended: redis.NewIntCmd(ctx, "llen", k.Ended()), running: redis.NewIntCmd(ctx, "hlen", k.Running()), share: newShareRead(ctx, k)}
}

// read reads the snapshot and more, and the run of its meta.
func (sn snapshot) read(ctx context.Context, s *Store, name string, more ...redis.Cmder) (Run, error) {
	cmds := append([]redis.Cmder{sn.meta, sn.counts, sn.ended, sn.running}, sn.share.cmds()...)
	if err := s.read(ctx, name, append(cmds, more...)...); err != nil {
		return Run{}, err
	}
	r, err := runOf(name, sn.meta.Val(), nil)
	r.Size, _ = strconv.Atoi(sn.meta.Val()["size"])
	return r, err
}

// logEntry is an entry of a run's log of ends as a tally read it: the
// eval's key and a digest of its record then. A log that lost entries and
// grew back past the tally's cursor (Redis rewound, the evals run again)
// has another entry, or another record, where the tally's last one was.
type logEntry struct {
	key    string
	digest uint64
}

func entryOf(key, record string) logEntry {
	h := fnv.New64a()
	_, _ = h.Write([]byte(record))
	return logEntry{key, h.Sum64()}
}

// skewOf is the outcomes the run's counts hash has less those t has.
func skewOf(counts map[string]string, t *tally) Outcomes {
	n := func(status string) int { v, _ := strconv.Atoi(counts[status]); return v }
	return Outcomes{Passed: n(Passed) - t.all.Passed, Failed: n(Failed) - t.all.Failed, Errored: n(Errored) - t.all.Errored, Cancelled: n(Cancelled) - t.all.Cancelled}
}

// summary is the run's Summary as lr has it, Compare aside.
func (lr *liveRun) summary() Summary {
	sum := lr.t.summary(lr.run)
	sum.Running = lr.running
	sum.Pending = max(0, sum.Size-sum.Done()-sum.Running)
	sum.Share = lr.share
	return sum
}
