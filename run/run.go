// Package run keeps runs: suites of evals submitted together under one name,
// watched while they run, judged by their pass rate and compared with the
// run before.
//
// A run is a few Redis keys under the hash tag {<name>}. The worker records
// each eval's end in the run as it happens, once, in one script (Finish), so
// that a summary is a read of the run's own keys: never a scan of Asynq's
// task lists, and O(1) Redis work per eval. The keys live as long as the
// evals' results (tasks.ResultRetention).
package run

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/lua"
)

// Sentinel errors, wrapped with context; check them with errors.Is.
var (
	// ErrNotFound means no run has that name (never submitted, or its
	// retention passed).
	ErrNotFound = errors.New("run not found")
	// ErrExists means a run of that name was submitted already.
	ErrExists = errors.New("run exists")
	// ErrInvalid means a name or key was refused before Redis was touched.
	ErrInvalid = errors.New("invalid run")
	// ErrRedisFull is pool.ErrRedisFull: Redis is at its maxmemory and
	// refused a write (a run's creation, an eval's end). Reads still work.
	ErrRedisFull = lua.ErrRedisFull
)

// Statuses an eval of a run ends in, and those it has before.
const (
	Passed    = "passed"    // completed, graded passed
	Failed    = "failed"    // completed, graded failed
	Errored   = "errored"   // archived: its attempts failed
	Cancelled = "cancelled" // cancelled before it ended
	Pending   = "pending"   // not started, or between attempts
	Running   = "running"   // an attempt runs
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$`)

// ValidateName checks a run's name: 1 to 100 letters, digits or "_.:-",
// starting with a letter or digit. Eval IDs are the run's name, "/", and the
// eval's key, so a name must not hold "/".
func ValidateName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w: name %q: want 1 to 100 letters, digits or _.:- (starting with a letter or digit)", ErrInvalid, name)
	}
	return nil
}

// EvalID is the eval ID (and Asynq task ID) of the eval key of a run: its
// key within the run is what compares across runs.
func EvalID(name, key string) string { return name + "/" + key }

// Store keeps runs in Redis. It is safe for concurrent use.
type Store struct {
	client    redis.UniversalClient
	retention time.Duration
	live      *liveRuns
}

// Options configure a Store. The zero value is usable.
type Options struct {
	// Retention is how long a run's keys live after its last eval ended.
	// Defaults to 7 days (tasks.ResultRetention).
	Retention time.Duration
	// LiveBytes bounds the memory the Store's tallies of the runs it
	// summed up lately take, over all runs, as it estimates it
	// (Summarize): about 120 bytes an end of a score and a duration, more
	// with metrics, groups and epochs. The run summed up last is kept
	// whatever its size. Defaults to DefaultLiveBytes; negative keeps
	// none, so that each summary reads its run whole.
	LiveBytes int
}

// DefaultRetention is Options.Retention's default: the evals' results'.
const DefaultRetention = 7 * 24 * time.Hour

// NewStore returns a Store on client. It does not touch Redis.
func NewStore(client redis.UniversalClient, opts Options) *Store {
	return &Store{client: client, retention: cmp.Or(opts.Retention, DefaultRetention), live: &liveRuns{max: max(0, cmp.Or(opts.LiveBytes, DefaultLiveBytes))}}
}

// Redis is the client the store runs on, for those that read Asynq's keys
// beside a run's (client.Submit looks for its evals' task IDs there).
func (s *Store) Redis() redis.UniversalClient { return s.client }

// Run is what a run was submitted as.
type Run struct {
	Name      string    `json:"name"`
	Pool      string    `json:"pool"`
	CreatedAt time.Time `json:"created_at"`
	// Keys are its evals' keys, in the order they were submitted.
	Keys []string `json:"-"`
	Size int      `json:"size"`
	// Require is what every eval of the run required, if anything.
	Require map[string]string `json:"require,omitempty"`
	// Meta is what the run was of, in its submitter's words (model=…,
	// commit=…, seed=…, dataset=…): shown with its summary and exports.
	// At most MaxMeta entries, each checked by CheckMeta.
	Meta map[string]string `json:"meta,omitempty"`
	// Epochs is how many times each eval of the suite runs, as evals
	// KEY#1 … KEY#Epochs (EpochKey); 0 or 1 when once.
	Epochs int `json:"epochs,omitempty"`
	// Submission is Complete once every eval was enqueued, Incomplete
	// until then: while its submitter enqueues, and for ever when the
	// submission was cut short (client.Submit with Resume finishes it).
	Submission string `json:"submission"`
	// Enqueued is how many evals a submission cut short had enqueued, when
	// it could say (-1 when not).
	Enqueued int `json:"enqueued,omitempty"`
	// Retention is how long the run's keys live after its last eval
	// ended. Zero means the Store's (Options.Retention).
	Retention time.Duration `json:"-"`
	// Weight is the run's share of its pool against the other runs in
	// flight (Admit). Defaults to 1; at most MaxWeight.
	Weight int `json:"weight,omitempty"`
	// MaxExecutors caps how many of its evals are in flight, and so how
	// many executors it holds at once. Zero: no cap.
	MaxExecutors int `json:"max_executors,omitempty"`
	// Priority is PriorityNormal (the default) or PriorityHigh: served
	// before the normal runs (Admit).
	Priority string `json:"priority,omitempty"`
	// MaxRetry and TaskRetention are the options its evals' tasks are
	// enqueued with when admitted (tasks.EvalOptions): 0 for the defaults,
	// a negative MaxRetry for no retry.
	MaxRetry      int           `json:"-"`
	TaskRetention time.Duration `json:"-"`
}

// weight is the run's weight, 1 when unset.
func (r Run) weight() int { return max(r.Weight, 1) }

// CheckShare refuses a weight, cap or priority Admit cannot apply.
func (r Run) CheckShare() error {
	switch {
	case r.Weight < 0 || r.Weight > MaxWeight:
		return fmt.Errorf("%w: run %s: weight %d: want 1 to %d", ErrInvalid, r.Name, r.Weight, MaxWeight)
	case r.MaxExecutors < 0 || r.MaxExecutors > MaxMaxExecutors:
		return fmt.Errorf("%w: run %s: max executors %d: want 0 (no cap) to %d", ErrInvalid, r.Name, r.MaxExecutors, MaxMaxExecutors)
	case r.Priority != "" && r.Priority != PriorityNormal && r.Priority != PriorityHigh:
		return fmt.Errorf("%w: run %s: priority %q: want %s or %s", ErrInvalid, r.Name, r.Priority, PriorityNormal, PriorityHigh)
	}
	return nil
}

// dated is a date, or a date and time, that a run's name ends with:
// -YYYYMMDD, with -HHMMSS after it and the API's -XXXXXX (6 hex digits)
// after that, or -YYYY-MM-DD with a time after it.
var dated = regexp.MustCompile(`-(\d{8}(-\d{6}(-[0-9a-f]{6})?)?|\d{4}-\d{2}-\d{2}([T_.:-][0-9:._-]*Z?)?)$`)

// Suite is what the run is a run of, to follow from run to run: its meta's
// "suite" when set, else its name less a date and time it ends with
// (nightly-20250102 and nightly-2025-01-03T02:00 are of suite nightly; the
// default names, run-YYYYMMDD-HHMMSS, all of suite run).
func (r Run) Suite() string {
	if s := r.Meta["suite"]; s != "" {
		return s
	}
	return dated.ReplaceAllString(r.Name, "")
}

// Bounds of a run's Meta and Epochs.
const (
	MaxMeta         = 32
	MaxMetaKeyLen   = 64
	MaxMetaValueLen = 512
	MaxEpochs       = 100
)

var metaKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,63}$`)

// CheckMeta refuses a run's metadata past MaxMeta entries, a key that is
// not 1 to 64 letters, digits or "_.-" starting with a letter or "_", or
// a value over MaxMetaValueLen bytes, not UTF-8 or with a control
// character: ErrInvalid.
func CheckMeta(meta map[string]string) error {
	if len(meta) > MaxMeta {
		return fmt.Errorf("%w: %d meta entries, more than %d", ErrInvalid, len(meta), MaxMeta)
	}
	for k, v := range meta {
		switch {
		case !metaKey.MatchString(k):
			return fmt.Errorf("%w: meta key %q: want 1 to %d letters, digits or _.- starting with a letter or _", ErrInvalid, k, MaxMetaKeyLen)
		case len(v) > MaxMetaValueLen || !utf8.ValidString(v) || strings.IndexFunc(v, unicode.IsControl) >= 0:
			return fmt.Errorf("%w: meta %s: want a value of at most %d bytes of UTF-8, no control character", ErrInvalid, k, MaxMetaValueLen)
		}
	}
	return nil
}

// EpochKey is the key of an eval's epoch-th repeat in a run of several
// epochs: KEY#epoch.
func EpochKey(key string, epoch int) string { return key + "#" + strconv.Itoa(epoch) }

// SampleKey is the key of the suite's eval a record repeats (the key
// less its "#epoch"), or its key when it is no repeat.
func (r Record) SampleKey() string {
	if r.Epoch == 0 {
		return r.Key
	}
	return strings.TrimSuffix(r.Key, "#"+strconv.Itoa(r.Epoch))
}

// Submission states of a run.
const (
	Complete   = "complete"
	Incomplete = "incomplete"
)

// Create records a new run and its eval keys, before any of its evals is
// enqueued, as Incomplete (Submitted completes it). A name in use is
// ErrExists; a Redis at maxmemory, ErrRedisFull, and nothing is kept.
func (s *Store) Create(ctx context.Context, r Run) error {
	if err := ValidateName(r.Name); err != nil {
		return err
	}
	if len(r.Keys) == 0 {
		return fmt.Errorf("%w: run %s has no evals", ErrInvalid, r.Name)
	}
	if r.Retention < 0 || r.Retention > 0 && r.Retention < time.Second {
		return fmt.Errorf("%w: run %s: retention %s: want 0 (the store's) or at least 1s", ErrInvalid, r.Name, r.Retention)
	}
	if err := CheckMeta(r.Meta); err != nil {
		return fmt.Errorf("run %s: %w", r.Name, err)
	}
	if r.Epochs < 0 || r.Epochs > MaxEpochs {
		return fmt.Errorf("%w: run %s: %d epochs: want 1 to %d", ErrInvalid, r.Name, r.Epochs, MaxEpochs)
	}
	if err := r.CheckShare(); err != nil {
		return err
	}
	req, err := json.Marshal(r.Require)
	if err != nil {
		return fmt.Errorf("%w: run %s: %w", ErrInvalid, r.Name, err)
	}
	meta, err := json.Marshal(r.Meta)
	if err != nil {
		return fmt.Errorf("%w: run %s: %w", ErrInvalid, r.Name, err)
	}
	retention := cmp.Or(r.Retention, s.retention)
	k := keys.ForRun(r.Name)
	created, err := s.client.HSetNX(ctx, k.Meta(), "name", r.Name).Result()
	if err != nil {
		return fmt.Errorf("run %s: %w", r.Name, lua.Full(err))
	}
	if !created {
		return fmt.Errorf("%w: %s", ErrExists, r.Name)
	}
	evals := make([]any, len(r.Keys))
	for i, key := range r.Keys {
		evals[i] = key
	}
	_, err = s.client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, k.Meta(), "pool", r.Pool, "created_at", r.CreatedAt.UnixMilli(), "size", len(r.Keys), "require", string(req), "meta", string(meta), "epochs", max(r.Epochs, 1), "submission", Incomplete,
			"retention", retention.Milliseconds(), "weight", r.weight(), "max_executors", r.MaxExecutors, "priority", cmp.Or(r.Priority, PriorityNormal),
			"max_retry", r.MaxRetry, "task_retention", r.TaskRetention.Milliseconds())
		for start := 0; start < len(evals); start += 10_000 {
			pipe.RPush(ctx, k.Evals(), evals[start:min(start+10_000, len(evals))]...)
		}
		for _, key := range k.Script() {
			pipe.PExpire(ctx, key, retention)
		}
		return nil
	})
	if err == nil {
		err = s.client.ZAdd(ctx, keys.Runs, redis.Z{Score: float64(r.CreatedAt.UnixMilli()), Member: r.Name}).Err()
	}
	if err == nil {
		err = s.indexSuite(ctx, r)
	}
	if err == nil {
		err = s.client.ZAdd(ctx, keys.OpenRuns(r.Pool), redis.Z{Score: float64(r.CreatedAt.UnixMilli()), Member: r.Name}).Err()
	}
	if err != nil {
		// Give the name back: a run half recorded could be neither resumed
		// nor submitted again. DEL works on a Redis at maxmemory.
		_ = s.client.Del(context.WithoutCancel(ctx), k.Script()...).Err()
		return fmt.Errorf("run %s: %w", r.Name, lua.Full(err))
	}
	return nil
}

// Submitted records that every eval of the run was enqueued.
func (s *Store) Submitted(ctx context.Context, name string) error {
	k := keys.ForRun(name)
	if _, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HSet(ctx, k.Meta(), "submission", Complete)
		pipe.HDel(ctx, k.Meta(), "enqueued")
		return nil
	}); err != nil {
		return fmt.Errorf("run %s: submitted: %w", name, lua.Full(err))
	}
	return nil
}

// CutShort records how many evals a submission that failed had enqueued;
// on Redis ≥ 7 even at maxmemory.
func (s *Store) CutShort(ctx context.Context, name string, enqueued int) error {
	if err := lua.RunCut.Run(ctx, s.client, []string{keys.ForRun(name).Meta()}, enqueued).Err(); err != nil {
		return fmt.Errorf("run %s: cut short: %w", name, lua.Full(err))
	}
	return nil
}

// Get reads a run as it was submitted, with its eval keys.
func (s *Store) Get(ctx context.Context, name string) (Run, error) {
	if err := ValidateName(name); err != nil {
		return Run{}, err
	}
	k := keys.ForRun(name)
	meta := redis.NewMapStringStringCmd(ctx, "hgetall", k.Meta())
	evals := redis.NewStringSliceCmd(ctx, "lrange", k.Evals(), 0, -1)
	if err := s.read(ctx, name, meta, evals); err != nil {
		return Run{}, err
	}
	return runOf(name, meta.Val(), evals.Val())
}

// read runs read commands on a run's keys as one step (lua.Read: a Redis
// at maxmemory refuses a MULTI, but serves this).
func (s *Store) read(ctx context.Context, name string, cmds ...redis.Cmder) error {
	err := lua.Read(ctx, s.client, keys.ForRun(name).Script(), cmds...)
	for _, c := range cmds {
		if err == nil && !errors.Is(c.Err(), redis.Nil) {
			err = c.Err()
		}
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", name, err)
	}
	return nil
}

func runOf(name string, meta map[string]string, evals []string) (Run, error) {
	if meta["name"] != name || meta["pool"] == "" {
		return Run{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	r := Run{Name: name, Pool: meta["pool"], Keys: evals, Size: len(evals)}
	r.Submission, r.Enqueued = submissionOf(meta["submission"], meta["enqueued"])
	ms, _ := strconv.ParseInt(meta["created_at"], 10, 64)
	r.CreatedAt = time.UnixMilli(ms)
	if ms, err := strconv.ParseInt(meta["retention"], 10, 64); err == nil {
		r.Retention = time.Duration(ms) * time.Millisecond
	}
	_ = json.Unmarshal([]byte(meta["require"]), &r.Require)
	_ = json.Unmarshal([]byte(meta["meta"]), &r.Meta)
	r.Epochs, _ = strconv.Atoi(meta["epochs"])
	r.Epochs = max(r.Epochs, 1)
	r.Weight, _ = strconv.Atoi(meta["weight"])
	r.Weight = max(r.Weight, 1)
	r.MaxExecutors, _ = strconv.Atoi(meta["max_executors"])
	r.Priority = cmp.Or(meta["priority"], PriorityNormal)
	r.MaxRetry, _ = strconv.Atoi(meta["max_retry"])
	if ms, err := strconv.ParseInt(meta["task_retention"], 10, 64); err == nil {
		r.TaskRetention = time.Duration(ms) * time.Millisecond
	}
	return r, nil
}

// List returns the runs still kept, newest first, at most limit.
func (s *Store) List(ctx context.Context, limit int) ([]Run, error) {
	names, err := s.client.ZRevRange(ctx, keys.Runs, 0, int64(limit)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("runs: %w", err)
	}
	metas := make([]*redis.MapStringStringCmd, len(names))
	if _, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, name := range names {
			metas[i] = pipe.HGetAll(ctx, keys.ForRun(name).Meta())
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("runs: %w", err)
	}
	var runs []Run
	var gone []any
	for i, name := range names {
		r, err := runOf(name, metas[i].Val(), nil)
		if errors.Is(err, ErrNotFound) {
			gone = append(gone, name) // its keys expired: drop it from the index too
			continue
		}
		r.Size, _ = strconv.Atoi(metas[i].Val()["size"])
		runs = append(runs, r)
	}
	if len(gone) > 0 {
		_ = s.client.ZRem(ctx, keys.Runs, gone...).Err()
	}
	return runs, nil
}

// Record is how one eval of a run ended.
type Record struct {
	Key    string   `json:"key"`
	Status string   `json:"status"`
	Score  *float64 `json:"score,omitempty"`
	// Metrics are the grader's named measures (executor.Result).
	Metrics map[string]float64 `json:"metrics,omitempty"`
	// Group and Epoch are the eval's (tasks.Eval), when it has them.
	Group    string  `json:"group,omitempty"`
	Epoch    int     `json:"epoch,omitempty"`
	Duration float64 `json:"duration_seconds,omitempty"`
	Retries  int     `json:"retries"`
	Error    string  `json:"error,omitempty"`
	Executor string  `json:"executor,omitempty"`
	// Output is what the executor answered besides its grade.
	Output json.RawMessage `json:"output,omitempty"`
	// ExitCode is the grader's exit code when it exited other than 0, and
	// Stdout and Stderr the ends of what it wrote besides its result, as
	// the executor answered them (executor.Result).
	ExitCode *int      `json:"exit_code,omitempty"`
	Stdout   string    `json:"stdout,omitempty"`
	Stderr   string    `json:"stderr,omitempty"`
	At       time.Time `json:"at"`
}

// Started notes that an attempt of the eval runs on executor, so that the
// summary tells running evals from pending ones. Its end (Finish) clears it.
func (s *Store) Started(ctx context.Context, name, key, executor string) error {
	if err := s.client.HSet(ctx, keys.ForRun(name).Running(), key, executor).Err(); err != nil {
		return fmt.Errorf("run %s: eval %s started: %w", name, key, lua.Full(err))
	}
	return nil
}

// AttemptEnded notes that an attempt of eval key of run name, on executor,
// ended with no graded result (failed and retried, handed back, errored at
// last, cancelled) after holding it for took: the eval runs there no more,
// unless a newer attempt runs elsewhere, and the time counts in the run's
// share (Share.HeldLastMinute). A graded attempt's time comes with its
// record (Finish).
func (s *Store) AttemptEnded(ctx context.Context, name, key, executor string, took time.Duration) error {
	if err := lua.RunAttempt.Run(ctx, s.client, keys.ForRun(name).Script(), key, executor, max(took.Milliseconds(), 0)).Err(); err != nil {
		return fmt.Errorf("run %s: eval %s: attempt ended: %w", name, key, lua.Full(err))
	}
	return nil
}

// Finish records how an eval of the run ended, unless it ended already: the
// first end wins, so a cancel and the attempt that was running when it came
// count once. recorded says whether this one counted.
func (s *Store) Finish(ctx context.Context, name string, rec Record) (recorded bool, err error) {
	switch rec.Status {
	case Passed, Failed, Errored, Cancelled:
	default:
		return false, fmt.Errorf("%w: eval %s of run %s: status %q", ErrInvalid, rec.Key, name, rec.Status)
	}
	raw, err := encodeRecord(rec)
	if err != nil {
		return false, fmt.Errorf("run %s: eval %s: %w", name, rec.Key, err)
	}
	score := ""
	if rec.Score != nil && !math.IsNaN(*rec.Score) && !math.IsInf(*rec.Score, 0) {
		score = strconv.FormatFloat(*rec.Score, 'g', -1, 64)
	}
	took := int64(rec.Duration * 1000)
	args := []any{rec.Key, rec.Status, raw, rec.Retries, score, s.retention.Milliseconds(), max(took, 0), MaxRunMetrics}
	if rec.Status == Passed || rec.Status == Failed {
		for _, m := range slices.Sorted(maps.Keys(rec.Metrics)) {
			if v := rec.Metrics[m]; finite(v) {
				args = append(args, m, strconv.FormatFloat(v, 'g', -1, 64))
			}
		}
	}
	n, err := lua.RunFinish.Run(ctx, s.client, keys.ForRun(name).Script(), args...).Int()
	if err != nil {
		return false, fmt.Errorf("run %s: eval %s ended: %w", name, rec.Key, lua.Full(err))
	}
	return n == 1, nil
}

// Records reads how each ended eval of the run ended, in the run's order.
// O(run size): for summaries and exports, not the hot path.
func (s *Store) Records(ctx context.Context, name string) (Run, []Record, map[string]string, error) {
	r, err := s.Get(ctx, name)
	if err != nil {
		return Run{}, nil, nil, err
	}
	k := keys.ForRun(name)
	done, running := redis.NewMapStringStringCmd(ctx, "hgetall", k.Done()), redis.NewMapStringStringCmd(ctx, "hgetall", k.Running())
	if err := s.read(ctx, name, done, running); err != nil {
		return Run{}, nil, nil, err
	}
	var recs []Record
	for _, key := range r.Keys {
		raw, ok := done.Val()[key]
		if !ok {
			continue
		}
		rec, err := decodeRecord(key, raw)
		if err != nil {
			return Run{}, nil, nil, fmt.Errorf("run %s: %w", name, err)
		}
		recs = append(recs, rec)
	}
	return r, recs, running.Val(), nil
}

// stored is a Record as the run keeps it, one per ended eval: short names,
// no key (the hash's field is), no zero field, its time in ms. A record
// written before this form (Record's own JSON) still reads.
type stored struct {
	// Position is the record's end's in the run's log of ends, from 1
	// (the Finish scripts write it): 0 in a record written before.
	Position int64              `json:"p,omitempty"`
	Status   string             `json:"s"`
	Score    *float64           `json:"c,omitempty"`
	Metrics  map[string]float64 `json:"m,omitempty"`
	Group    string             `json:"g,omitempty"`
	Epoch    int                `json:"ep,omitempty"`
	Duration float64            `json:"d,omitempty"`
	Retries  int                `json:"r,omitempty"`
	Error    string             `json:"e,omitempty"`
	Executor string             `json:"x,omitempty"`
	Output   json.RawMessage    `json:"o,omitempty"`
	ExitCode *int               `json:"xc,omitempty"`
	Stdout   string             `json:"so,omitempty"`
	Stderr   string             `json:"se,omitempty"`
	At       int64              `json:"t,omitempty"`
}

func encodeRecord(rec Record) (string, error) {
	st := stored{Status: rec.Status, Score: rec.Score, Metrics: rec.Metrics, Group: rec.Group, Epoch: rec.Epoch, Duration: rec.Duration, Retries: rec.Retries, Error: rec.Error, Executor: rec.Executor, Output: rec.Output,
		ExitCode: rec.ExitCode, Stdout: rec.Stdout, Stderr: rec.Stderr}
	if !rec.At.IsZero() {
		st.At = rec.At.UnixMilli()
	}
	b, err := json.Marshal(st)
	return string(b), err
}

func decodeRecord(key, raw string) (Record, error) {
	rec, _, err := decodeStored(key, raw)
	return rec, err
}

// decodeStored reads a stored record, and its end's position in the log
// (0 when it has none).
func decodeStored(key, raw string) (Record, int64, error) {
	var st stored
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return Record{}, 0, fmt.Errorf("eval %s: unreadable record: %w", key, err)
	}
	if st.Status == "" {
		var rec Record
		if err := json.Unmarshal([]byte(raw), &rec); err != nil || rec.Status == "" {
			return Record{}, 0, fmt.Errorf("eval %s: unreadable record: %w", key, cmp.Or(err, errors.New("no status")))
		}
		rec.Key = key
		return rec, 0, nil
	}
	rec := Record{Key: key, Status: st.Status, Score: st.Score, Metrics: st.Metrics, Group: st.Group, Epoch: st.Epoch, Duration: st.Duration, Retries: st.Retries, Error: st.Error, Executor: st.Executor, Output: st.Output,
		ExitCode: st.ExitCode, Stdout: st.Stdout, Stderr: st.Stderr}
	if st.At != 0 {
		rec.At = time.UnixMilli(st.At)
	}
	return rec, st.Position, nil
}

// finishBatch bounds the evals one FinishMany script records: a script
// blocks Redis while it runs.
const finishBatch = 1000

// FinishMany records that the evals keys of the run ended as rec says (its
// Key unused), each unless it ended already, as Finish does: a script per
// 1,000 evals, not a round trip per eval. It returns how many counted.
func (s *Store) FinishMany(ctx context.Context, name string, evalKeys []string, rec Record) (recorded int, err error) {
	switch rec.Status {
	case Passed, Failed, Errored, Cancelled:
	default:
		return 0, fmt.Errorf("%w: run %s: status %q", ErrInvalid, name, rec.Status)
	}
	rec.Key = ""
	raw, err := encodeRecord(rec)
	if err != nil {
		return 0, fmt.Errorf("run %s: %w", name, err)
	}
	for start := 0; start < len(evalKeys); start += finishBatch {
		chunk := evalKeys[start:min(start+finishBatch, len(evalKeys))]
		args := make([]any, 0, 3+len(chunk))
		args = append(args, rec.Status, raw, s.retention.Milliseconds())
		for _, key := range chunk {
			args = append(args, key)
		}
		n, err := lua.RunFinishMany.Run(ctx, s.client, keys.ForRun(name).Script(), args...).Int()
		recorded += n
		if err != nil {
			return recorded, fmt.Errorf("run %s: %d evals ended: %w", name, len(chunk), lua.Full(err))
		}
	}
	return recorded, nil
}

// Record reads how one eval of the run ended; ok is false while it has
// not (or the run is gone). O(1).
func (s *Store) Record(ctx context.Context, name, key string) (rec Record, ok bool, err error) {
	raw, err := s.client.HGet(ctx, keys.ForRun(name).Done(), key).Result()
	if errors.Is(err, redis.Nil) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, fmt.Errorf("run %s: %w", name, err)
	}
	rec, err = decodeRecord(key, raw)
	if err != nil {
		return Record{}, false, fmt.Errorf("run %s: %w", name, err)
	}
	return rec, true, nil
}

// EndedKeys is the keys of the run's evals whose end is recorded: O(ended).
func (s *Store) EndedKeys(ctx context.Context, name string) (map[string]bool, error) {
	ks, err := s.client.HKeys(ctx, keys.ForRun(name).Done()).Result()
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	ended := make(map[string]bool, len(ks))
	for _, k := range ks {
		ended[k] = true
	}
	return ended, nil
}

// MaxEndedSince bounds EndedSince's max: one call reads at most this many
// records.
const MaxEndedSince = 10_000

// EndedSince reads the records of the run's evals that ended at positions
// [cursor, cursor+max) of its log of ends, in the order they ended, and the
// cursor to read on from: cursor plus the log entries read, so that a
// follower that starts at 0 and passes next back sees every end once, and
// next == cursor means none ended since. O(entries read): a follower's cost
// per end does not grow with the run.
//
// Every end of an eval of the run is logged, by the script that records it
// (Finish, and the cancels and reconciliation that go through it); ends
// recorded before the log existed (a run written by the previous release)
// are in Records but not in the log. An eval reopened (Reopen) keeps its
// entry, and is logged again when it ends again: an entry whose eval is
// reopened, or ended again later in the log, is skipped, so that fewer
// records than entries may come back, even none while next moves on. A
// cursor below 0, or a max outside 1..MaxEndedSince, is ErrInvalid; an
// unknown run, ErrNotFound.
func (s *Store) EndedSince(ctx context.Context, name string, cursor int64, max int) (recs []Record, next int64, err error) {
	recs, next, _, err = s.endedSince(ctx, name, cursor, max)
	return recs, next, err
}

// endedSince is EndedSince, with the last entry it read (zero when none).
func (s *Store) endedSince(ctx context.Context, name string, cursor int64, max int) (recs []Record, next int64, last logEntry, err error) {
	if err := ValidateName(name); err != nil {
		return nil, cursor, last, err
	}
	if cursor < 0 || max < 1 || max > MaxEndedSince {
		return nil, cursor, last, fmt.Errorf("%w: run %s: ended since %d, at most %d: want a cursor ≥ 0 and 1 to %d records", ErrInvalid, name, cursor, max, MaxEndedSince)
	}
	k := keys.ForRun(name)
	found, ended := redis.NewStringCmd(ctx, "hget", k.Meta(), "name"), redis.NewStringSliceCmd(ctx, "lrange", k.Ended(), cursor, cursor+int64(max)-1)
	if err := s.read(ctx, name, found, ended); err != nil {
		return nil, cursor, last, err
	}
	if found.Val() != name {
		return nil, cursor, last, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	n := len(ended.Val())
	if n == 0 {
		return nil, cursor, last, nil
	}
	logged, lastRaw, err := s.ends(ctx, name, ended.Val(), cursor)
	if err != nil {
		return nil, cursor, last, err
	}
	for _, rec := range logged {
		if rec != nil {
			recs = append(recs, *rec)
		}
	}
	return recs, cursor + int64(n), entryOf(ended.Val()[n-1], lastRaw), nil
}

// ends reads the records of entries of the run's log of ends, the first
// at position from (from 0), in one round trip with the run's name after
// them: a record missing is an eval reopened while the run is there, an
// expired run when not (ErrNotFound). An entry whose eval is reopened, or
// ended again later in the log, is nil; lastRaw is the last entry's record
// as stored ("" when none).
func (s *Store) ends(ctx context.Context, name string, entries []string, from int64) (recs []*Record, lastRaw string, err error) {
	k := keys.ForRun(name)
	var raws *redis.SliceCmd
	var found *redis.StringCmd
	if _, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		raws = pipe.HMGet(ctx, k.Done(), entries...)
		found = pipe.HGet(ctx, k.Meta(), "name")
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("run %s: %w", name, err)
	}
	if found.Val() != name {
		return nil, "", fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	recs = make([]*Record, len(entries))
	for i, raw := range raws.Val() {
		str, ok := raw.(string)
		if i == len(entries)-1 {
			lastRaw = str
		}
		if !ok {
			continue // reopened, not ended again yet
		}
		rec, pos, err := decodeStored(entries[i], str)
		if err != nil {
			return nil, "", fmt.Errorf("run %s: %w", name, err)
		}
		if pos != 0 && pos != from+int64(i)+1 {
			continue // it ended again, later in the log
		}
		recs[i] = &rec
	}
	return recs, lastRaw, nil
}

// Results is every eval of the run, in the run's order: how it ended when
// it did, else Running (on its executor) or Pending. O(run size), as
// Records.
func (s *Store) Results(ctx context.Context, name string) (Run, []Record, error) {
	r, recs, running, err := s.Records(ctx, name)
	if err != nil {
		return Run{}, nil, err
	}
	ended := make(map[string]Record, len(recs))
	for _, rec := range recs {
		ended[rec.Key] = rec
	}
	rows := make([]Record, len(r.Keys))
	for i, key := range r.Keys {
		rec, ok := ended[key]
		switch {
		case ok:
		case running[key] != "":
			rec = Record{Key: key, Status: Running, Executor: running[key]}
		default:
			rec = Record{Key: key, Status: Pending}
		}
		rows[i] = rec
	}
	return r, rows, nil
}

// Ended reports whether the record is an eval's end, not a Running or
// Pending row of Results.
func (r Record) Ended() bool { return r.Status != Running && r.Status != Pending }

// Counts is a run's progress, read in O(1).
type Counts struct {
	Size      int `json:"size"`
	Passed    int `json:"passed"`
	Failed    int `json:"failed"`
	Errored   int `json:"errored"`
	Cancelled int `json:"cancelled"`
	Running   int `json:"running"`
	Pending   int `json:"pending"`
}

// Done is how many evals have ended.
func (c Counts) Done() int { return c.Passed + c.Failed + c.Errored + c.Cancelled }

// Progress reads a run's counts without reading its records.
func (s *Store) Progress(ctx context.Context, name string) (Counts, error) {
	c, _, err := s.ProgressMeans(ctx, name)
	return c, err
}

// Means are a run's means that Finish keeps sums and counts of beside its
// counts, read in O(1).
type Means struct {
	// Score is the mean score of its ended evals that have one
	// (Summary.MeanScore); nil before any.
	Score *float64
	// Metrics are each metric's mean over its graded evals: eval by eval,
	// where Summary.Metrics are sample by sample (the same when every
	// sample has as many epochs graded).
	Metrics map[string]float64
}

// ProgressMeans is Progress, with the run's Means: O(1).
func (s *Store) ProgressMeans(ctx context.Context, name string) (Counts, Means, error) {
	if err := ValidateName(name); err != nil {
		return Counts{}, Means{}, err
	}
	k := keys.ForRun(name)
	counts, size, running := redis.NewMapStringStringCmd(ctx, "hgetall", k.Counts()), redis.NewStringCmd(ctx, "hget", k.Meta(), "size"), redis.NewIntCmd(ctx, "hlen", k.Running())
	if err := s.read(ctx, name, counts, size, running); err != nil {
		return Counts{}, Means{}, err
	}
	c, err := countsOf(name, size.Val(), counts.Val(), running.Val())
	if err != nil {
		return Counts{}, Means{}, err
	}
	// A sum past float64 (two values of 1e308) or below one in n has no
	// mean to give.
	mean := func(sum, n string) (float64, bool) {
		s, err1 := strconv.ParseFloat(sum, 64)
		n64, err2 := strconv.Atoi(n)
		return s / float64(n64), err1 == nil && err2 == nil && n64 > 0
	}
	var m Means
	if v, ok := mean(counts.Val()["score_sum"], counts.Val()["score_n"]); ok {
		m.Score = &v
	}
	for field, n := range counts.Val() {
		name, ok := strings.CutPrefix(field, "metric_n:")
		if !ok {
			continue
		}
		if v, ok := mean(counts.Val()["metric_sum:"+name], n); ok {
			if m.Metrics == nil {
				m.Metrics = map[string]float64{}
			}
			m.Metrics[name] = v
		}
	}
	return c, m, nil
}

// countsOf makes a run's Counts of its meta's size, its counts hash and
// the length of its running hash: ErrNotFound when it has no size.
func countsOf(name, size string, counts map[string]string, running int64) (Counts, error) {
	n, err := strconv.Atoi(size)
	if err != nil {
		return Counts{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	atoi := func(s string) int { v, _ := strconv.Atoi(s); return v }
	c := Counts{Size: n, Passed: atoi(counts[Passed]), Failed: atoi(counts[Failed]),
		Errored: atoi(counts[Errored]), Cancelled: atoi(counts[Cancelled]), Running: int(running)}
	c.Pending = max(0, n-c.Done()-c.Running)
	return c, nil
}

// Submission reads a run's submission state, and how many evals a
// submission cut short had enqueued (-1 when unknown), in O(1).
func (s *Store) Submission(ctx context.Context, name string) (state string, enqueued int, err error) {
	if err := ValidateName(name); err != nil {
		return "", 0, err
	}
	vals, err := s.client.HMGet(ctx, keys.ForRun(name).Meta(), "name", "submission", "enqueued").Result()
	if err != nil {
		return "", 0, fmt.Errorf("run %s: %w", name, err)
	}
	if vals[0] != name {
		return "", 0, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	state, _ = vals[1].(string)
	n, _ := vals[2].(string)
	state, enqueued = submissionOf(state, n)
	return state, enqueued, nil
}

// submissionOf reads the meta fields submission and enqueued: a run
// without them was created before runs kept them, whole.
func submissionOf(state, enqueued string) (string, int) {
	if state != Incomplete {
		return Complete, 0
	}
	n, err := strconv.Atoi(enqueued)
	if err != nil {
		return Incomplete, -1
	}
	return Incomplete, n
}
