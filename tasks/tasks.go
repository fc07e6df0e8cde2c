// Package tasks names evalpool's Asynq tasks and holds their payloads.
//
// Everything that crosses the queue is built and checked here, so that a
// worker never has to guess at a payload: constructors validate before a task
// is enqueued, and Parse functions validate again when it is dequeued (a
// payload can also be put on the queue by any Asynq client). A payload that
// fails validation is ErrBadPayload, which the worker archives at once rather
// than retrying something that can never succeed.
//
// The package knows Asynq's task types and options, nothing of Redis keys.
package tasks

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/run"
)

// Task type names.
const (
	TypeEval           = "eval:run"
	TypeCleanupSuccess = "eval:cleanup:success"
	TypeCleanupFailure = "eval:cleanup:failure"
	TypeReap           = "pool:reap"
)

// Queue names of the default pool. Every other pool has queues of its own
// (Queues), so that a worker never dequeues another pool's task.
const (
	QueueEvals       = "evals"
	QueueCleanup     = "cleanup"
	QueueMaintenance = "maintenance"
)

// DefaultPool is the pool a payload that names none belongs to (one written
// before payloads named their pool). It is the pool package's default name.
const DefaultPool = "default"

// PoolQueues are the Asynq queues of one pool. A worker serves maintenance
// and cleanup apart from evals, so that a release never waits behind a
// backlog of evals.
type PoolQueues struct {
	Evals, Cleanup, Maintenance string
}

// Queues returns the queues of a pool: evals, cleanup and maintenance for
// the default pool, and the same names suffixed with ":" and the pool's name
// for the others.
func Queues(pool string) PoolQueues {
	if pool == "" || pool == DefaultPool {
		return PoolQueues{QueueEvals, QueueCleanup, QueueMaintenance}
	}
	return PoolQueues{QueueEvals + ":" + pool, QueueCleanup + ":" + pool, QueueMaintenance + ":" + pool}
}

// PoolOfQueue returns the pool whose queue q is, and false when q is no
// evalpool queue.
func PoolOfQueue(q string) (string, bool) {
	for _, base := range []string{QueueEvals, QueueCleanup, QueueMaintenance} {
		if q == base {
			return DefaultPool, true
		}
		if pool, ok := strings.CutPrefix(q, base+":"); ok && pool != "" {
			return pool, true
		}
	}
	return "", false
}

// ResultKey is the Redis hash where Asynq keeps the task id of queue q,
// whose "result" field holds what the task's ResultWriter wrote. The worker
// writes an eval's result there itself, in the round trip that releases its
// executor; the key is Asynq's own (v0.26), and a test checks that Asynq
// reads back what is written there.
func ResultKey(q, id string) string {
	return "asynq:{" + q + "}:t:" + id
}

// HeldKey is the ZSET of queue q's scheduled tasks by the second each is
// due: Asynq's own (v0.26). An eval of no run waits there for admission
// (run.HeldFor).
func HeldKey(q string) string { return "asynq:{" + q + "}:scheduled" }

// LeaseKey is the ZSET of queue q's active tasks by the second their
// Asynq lease ends: Asynq's own (v0.26).
func LeaseKey(q string) string { return "asynq:{" + q + "}:lease" }

// Hold is the enqueue option that holds an eval of no run, enqueued at
// now by Redis's clock, for admission (run.HeldFor): its due time orders
// it among the held evals of every producer, and dates its wait.
func Hold(now time.Time) asynq.Option { return asynq.ProcessAt(now.Add(run.HeldFor)) }

// Held reports whether a task due at due is an eval of no run waiting for
// admission (run.HeldFor).
func Held(due time.Time) bool { return time.Until(due) > run.HeldFor/2 }

// poolOrDefault is the pool a payload names, or DefaultPool for none.
func poolOrDefault(pool string) string {
	if pool == "" {
		return DefaultPool
	}
	return pool
}

func validatePool(pool string) error {
	if strings.ContainsAny(pool, "{},") || len(pool) > MaxEvalIDLen {
		return fmt.Errorf("%w: pool name %q: at most %d bytes, without '{', '}' or ','", ErrBadPayload, pool, MaxEvalIDLen)
	}
	return nil
}

// Cleanup paths: who enqueued a cleanup. Success and failure are the eval
// handler's own outcome; ErrorHandler is the server's error handler, the
// second path that fires for the same failed attempt.
const (
	PathSuccess      = "success"
	PathFailure      = "failure"
	PathErrorHandler = "error_handler"
	// PathInline is the attempt releasing its own executor in its handler
	// (worker.CleanupInline); it is never a cleanup task's path.
	PathInline = "inline"
)

// Limits and defaults of an eval.
const (
	MaxEvalIDLen    = 200
	MaxSpecBytes    = 1 << 20
	DefaultTimeout  = 10 * time.Minute
	DefaultLeaseTTL = 30 * time.Second
	// WaitAllowance is added to an eval task's timeout in Asynq: an attempt
	// may spend up to half of it waiting for an executor, and the eval's own
	// timeout starts when it has one, so that waiting never eats it.
	WaitAllowance = 2 * time.Minute
	// MaxLeaseTTL bounds a lease's TTL (pool.MaxLeaseTTL).
	MaxLeaseTTL     = 24 * time.Hour
	DefaultMaxRetry = 3
	// CleanupMaxRetry is high: a cleanup that cannot reach Redis must keep
	// trying, and a duplicate release is not a failure.
	CleanupMaxRetry = 25
	// ResultRetention keeps finished evals and their results readable: the
	// default of EvalOptions.Retention.
	ResultRetention = 7 * 24 * time.Hour
	// RunTaskRetention is the default Retention of a run's evals' tasks:
	// the run keeps their ends and results for its own retention, and the
	// task is only the window in which its ID stays taken in Asynq and
	// the reap can reconcile an end the run missed (see client.Submit).
	RunTaskRetention = time.Hour
	// CleanupRetention keeps a finished cleanup's TaskID taken, so that a
	// duplicate enqueue of it is refused for that long.
	CleanupRetention = 24 * time.Hour
)

// ErrBadPayload means a task's payload can never be processed.
var ErrBadPayload = errors.New("bad payload")

// Eval is the payload of TypeEval.
type Eval struct {
	// ID identifies the eval; it is also the Asynq task ID, so an eval is
	// enqueued once and looked up by its ID. A worker refuses a task whose
	// ID differs: the pool keys leases by eval, and two tasks sharing one
	// eval ID would share one lease.
	ID string `json:"eval_id"`
	// Pool names the pool the eval runs on. Empty means DefaultPool.
	Pool string `json:"pool,omitempty"`
	// Spec is any JSON the executor understands.
	Spec json.RawMessage `json:"spec"`
	// LeaseTTLMs is the executor lease's TTL; 0 means the worker's default.
	LeaseTTLMs int64 `json:"lease_ttl_ms,omitempty"`
	// TimeoutS bounds one attempt, in whole seconds as Asynq stores it.
	TimeoutS int64 `json:"timeout_s"`
	// Run names the run the eval belongs to, if any, and Key the eval within
	// it: its ID is then run.EvalID(Run, Key), and the worker records its end
	// in the run.
	Run string `json:"run,omitempty"`
	Key string `json:"key,omitempty"`
	// Require lists labels its executor must have, all of them (gpu=a100):
	// it runs only on such an executor. Check with pool.CanServe before
	// enqueueing: an eval no registered executor could serve is retried
	// until it is archived. At most labels.Max.
	Require map[string]string `json:"require,omitempty"`
	// Group names the subset of its suite the eval is in ("math",
	// "code/easy"), which a run's summary gives its own pass rate and
	// means: at most MaxGroupLen bytes, no control character.
	Group string `json:"group,omitempty"`
	// Epoch is which of a run's repeats of one eval this is, from 1, when
	// the run repeats its evals (client.RunRequest.Epochs); 0 when not.
	Epoch int `json:"epoch,omitempty"`
}

// MaxGroupLen bounds an eval's Group.
const MaxGroupLen = 100

// LeaseTTL is the eval's lease TTL, or def when it names none.
func (e Eval) LeaseTTL(def time.Duration) time.Duration {
	if e.LeaseTTLMs == 0 {
		return def
	}
	return time.Duration(e.LeaseTTLMs) * time.Millisecond
}

// Timeout is how long one attempt may run.
func (e Eval) Timeout() time.Duration { return time.Duration(e.TimeoutS) * time.Second }

func (e Eval) validate() error {
	if err := validateID(e.ID); err != nil {
		return err
	}
	if err := CheckUTF8([]byte(e.ID)); err != nil {
		return fmt.Errorf("eval ID %q: %w", e.ID, err)
	}
	if err := validatePool(e.Pool); err != nil {
		return err
	}
	if len(e.Spec) == 0 {
		return fmt.Errorf("%w: eval %s: spec is missing", ErrBadPayload, e.ID)
	}
	if n := encodedSize(e.Spec); n > MaxSpecBytes {
		return fmt.Errorf("%w: eval %s: spec is %d bytes as its task carries it (compact JSON; <, > and & take six bytes each), more than %d", ErrBadPayload, e.ID, n, MaxSpecBytes)
	}
	if !json.Valid(e.Spec) {
		return fmt.Errorf("%w: eval %s: spec is not valid JSON", ErrBadPayload, e.ID)
	}
	if err := CheckUTF8(e.Spec); err != nil {
		return fmt.Errorf("eval %s: spec: %w", e.ID, err)
	}
	if e.LeaseTTLMs < 0 || e.LeaseTTLMs > 0 && e.LeaseTTLMs < 10 || e.LeaseTTLMs > MaxLeaseTTL.Milliseconds() {
		return fmt.Errorf("%w: eval %s: lease TTL %dms: want 0 (the worker's), or from 10ms to %s", ErrBadPayload, e.ID, e.LeaseTTLMs, MaxLeaseTTL)
	}
	if e.TimeoutS < 1 {
		return fmt.Errorf("%w: eval %s: timeout %ds: want at least 1s", ErrBadPayload, e.ID, e.TimeoutS)
	}
	if err := labels.Validate(e.Require); err != nil {
		return fmt.Errorf("%w: eval %s: required labels: %w", ErrBadPayload, e.ID, err)
	}
	if len(e.Group) > MaxGroupLen || strings.IndexFunc(e.Group, unicode.IsControl) >= 0 {
		return fmt.Errorf("%w: eval %s: group %q: want at most %d bytes, no control character", ErrBadPayload, e.ID, e.Group, MaxGroupLen)
	}
	if err := CheckUTF8([]byte(e.Group)); err != nil {
		return fmt.Errorf("eval %s: group: %w", e.ID, err)
	}
	if e.Epoch < 0 {
		return fmt.Errorf("%w: eval %s: epoch %d: want 0, or from 1", ErrBadPayload, e.ID, e.Epoch)
	}
	if e.Run != "" || e.Key != "" {
		if err := run.ValidateName(e.Run); err != nil {
			return fmt.Errorf("%w: eval %s: %w", ErrBadPayload, e.ID, err)
		}
		if e.Key == "" || e.ID != run.EvalID(e.Run, e.Key) {
			return fmt.Errorf("%w: eval %s of run %s: its ID must be %q", ErrBadPayload, e.ID, e.Run, run.EvalID(e.Run, e.Key))
		}
	}
	return nil
}

// encodedSize is the size of spec in an eval's payload, the measure
// MaxSpecBytes bounds, for a producer and a worker alike: encoding/json
// writes a spec compacted, with <, > and & (and U+2028, U+2029) escaped in
// six bytes each, so a spec of 400 KiB of '<' takes 2.4 MiB. A spec read
// from a payload written so measures its own length. It counts without
// building the encoding (a worker measures every eval); spec must be valid
// JSON for the count to be the encoding's.
func encodedSize(spec json.RawMessage) int {
	n := 0
	inString := false
	for i := 0; i < len(spec); i++ {
		if inString {
			j := i
			for j < len(spec) && copied[spec[j]] {
				j++
			}
			n += j - i
			if i = j; i == len(spec) {
				break
			}
		}
		switch c := spec[i]; {
		case inString && c == '\\' && i+1 < len(spec):
			n++ // and the escaped byte, as it is
			i++
		case c == '"':
			inString = !inString
		case !inString && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			continue // compacted away
		case c == '<' || c == '>' || c == '&':
			n += len(`\u003c`) - 1
		case c == 0xE2 && i+2 < len(spec) && spec[i+1] == 0x80 && spec[i+2]&^1 == 0xA8:
			n += len(`\u2028`) - 1
			i += 2
		}
		n++
	}
	return n
}

// copied marks the bytes the encoding copies as they are inside a string.
var copied = func() (t [256]bool) {
	for c := range t {
		t[c] = c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' && c != 0xE2
	}
	return t
}()

func validateID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: eval ID is empty", ErrBadPayload)
	}
	if len(id) > MaxEvalIDLen {
		return fmt.Errorf("%w: eval ID is %d bytes, more than %d", ErrBadPayload, len(id), MaxEvalIDLen)
	}
	if strings.IndexFunc(id, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("%w: eval ID %q holds spaces or control characters", ErrBadPayload, id)
	}
	return nil
}

// CheckUTF8 refuses input that is not UTF-8, naming its first bad byte
// (from 1), as ErrBadPayload. Check raw input before decoding it as JSON:
// encoding/json turns such bytes into U+FFFD in a string, and carries them
// as they are in a spec, so that the executor would not grade what was
// submitted.
func CheckUTF8(b []byte) error {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return fmt.Errorf("%w: not valid UTF-8 (byte %d)", ErrBadPayload, i+1)
		}
		i += size
	}
	return nil
}

// NoExecutorReserve is added to an eval task's MaxRetry. Asynq archives a
// task whose retries are spent before it asks IsFailure, so without it an
// eval on its last attempt that finds no free executor would be archived
// instead of waiting. The worker archives an eval itself after MaxRetry real
// failures (which are all Asynq counts in Retried), so Asynqmon shows one
// retry more than the eval has.
const NoExecutorReserve = 1

// EvalOptions tune NewEval. The zero value is usable.
type EvalOptions struct {
	// MaxRetry is how many times a failed attempt is retried. Defaults to
	// DefaultMaxRetry (3), so that options left unset still retry. Negative
	// for none.
	MaxRetry int
	// Retention is how long the eval's task, and the result in it, is kept
	// once it ended: its ID stays taken (a duplicate enqueue is refused)
	// and its result readable for that long. Defaults to ResultRetention
	// (7 days); at least 1 s.
	Retention time.Duration
}

func (o EvalOptions) validate() error {
	if o.Retention < 0 || o.Retention > 0 && o.Retention < time.Second {
		return fmt.Errorf("%w: retention %s: want at least 1s", ErrBadPayload, o.Retention)
	}
	return nil
}

// retries is how many times NewEval has Asynq retry a failed attempt, not
// counting NoExecutorReserve.
func (o EvalOptions) retries() int {
	switch {
	case o.MaxRetry < 0:
		return 0
	case o.MaxRetry == 0:
		return DefaultMaxRetry
	}
	return o.MaxRetry
}

// NewEval builds the task of an eval: its pool's evals queue, task ID the
// eval ID, the attempt timeout plus WaitAllowance (the worker applies the
// timeout itself from when the eval has an executor), and its result
// retained for opts.Retention (ResultRetention by default). Its spec is measured as the payload carries
// it, as the worker measures it (MaxSpecBytes). A zero timeout means
// DefaultTimeout; a timeout is rounded up to whole seconds, since Asynq
// would turn 300ms into no timeout at all.
func NewEval(e Eval, opts EvalOptions) (*asynq.Task, error) {
	if e.TimeoutS == 0 {
		e.TimeoutS = int64(DefaultTimeout / time.Second)
	}
	e.Pool = poolOrDefault(e.Pool)
	if err := e.validate(); err != nil {
		return nil, err
	}
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("eval %s: %w", e.ID, err)
	}
	if e.Run == "" && strings.Contains(e.ID, "/") {
		// RUN/KEY is a run's eval: a plain eval under that ID would be
		// taken for the run's, and its task would block the run's enqueue.
		// Only producers refuse it: a worker still runs one queued before.
		return nil, fmt.Errorf("%w: eval ID %q holds '/': IDs RUN/KEY are the evals of runs; submit it in a run, or pick an ID without '/'", ErrBadPayload, e.ID)
	}
	payload, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("%w: eval %s: %w", ErrBadPayload, e.ID, err)
	}
	return asynq.NewTask(TypeEval, payload,
		asynq.Queue(Queues(e.Pool).Evals),
		asynq.TaskID(e.ID),
		asynq.MaxRetry(opts.retries()+NoExecutorReserve),
		asynq.Timeout(e.Timeout()+WaitAllowance),
		asynq.Retention(cmp.Or(opts.Retention, ResultRetention)),
	), nil
}

// TimeoutSeconds rounds d up to whole seconds, at least 1.
func TimeoutSeconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}

// ParseEval decodes and validates an eval payload. A payload that names no
// pool is the default pool's.
func ParseEval(data []byte) (Eval, error) {
	var e Eval
	if err := decodePayload(data, &e); err != nil {
		return Eval{}, err
	}
	e.Pool = poolOrDefault(e.Pool)
	return e, e.validate()
}

// EvalResult is what a completed eval leaves as its task's result: the
// worker writes it, and producers read it back from Asynq (TaskInfo.Result)
// without importing the worker. It is kept for ResultRetention.
type EvalResult struct {
	EvalID   string `json:"eval_id"`
	Executor string `json:"executor"`
	Fence    int64  `json:"fence"`
	// Attempt is Asynq's retry count of the attempt that ran it: 0 for
	// the first.
	Attempt int `json:"attempt"`
	// Status is the executor's verdict: executor.StatusPassed,
	// executor.StatusFailed, or executor.StatusErrored for the last
	// attempt of an eval that errored.
	Status  string             `json:"status"`
	Score   *float64           `json:"score,omitempty"`
	Metrics map[string]float64 `json:"metrics,omitempty"`
	Output  json.RawMessage    `json:"output,omitempty"`
	executor.Diagnostics
	Duration float64 `json:"duration_seconds"`
}

// Record is how the eval e ended with this result, as its run keeps it,
// at at.
func (r EvalResult) Record(e Eval, at time.Time) run.Record {
	return run.Record{Key: e.Key, Status: r.Status, Score: r.Score, Metrics: r.Metrics, Group: e.Group, Epoch: e.Epoch,
		Duration: r.Duration, Retries: r.Attempt, Error: r.Error, Executor: r.Executor, Output: r.Output,
		ExitCode: r.ExitCode, Stdout: r.Stdout, Stderr: r.Stderr, At: at}
}

// Cleanup is the payload of both cleanup task types.
type Cleanup struct {
	EvalID string `json:"eval_id"`
	// Pool names the pool the lease is of. Empty means DefaultPool.
	Pool  string `json:"pool,omitempty"`
	URL   string `json:"url"`
	Token string `json:"token"`
	Fence int64  `json:"fence"`
	Path  string `json:"path"`
	// Error is the attempt's error, for failure cleanups.
	Error string `json:"error,omitempty"`
	// Verdict is what the attempt made of the executor (pool.Verdict), and
	// Retrying whether the eval will be tried again: the release that ends
	// the lease records them.
	Verdict  string `json:"verdict,omitempty"`
	Retrying bool   `json:"retrying,omitempty"`
}

func (c Cleanup) validate() error {
	if err := validateID(c.EvalID); err != nil {
		return err
	}
	if err := validatePool(c.Pool); err != nil {
		return err
	}
	if c.URL == "" || c.Token == "" {
		return fmt.Errorf("%w: cleanup of eval %s: url and token are required", ErrBadPayload, c.EvalID)
	}
	switch c.Path {
	case PathSuccess, PathFailure, PathErrorHandler:
	default:
		return fmt.Errorf("%w: cleanup of eval %s: unknown path %q", ErrBadPayload, c.EvalID, c.Path)
	}
	return nil
}

// CleanupTaskID is the task ID of a cleanup: one per path, eval and lease,
// so that enqueueing the same cleanup twice is refused by Asynq
// (ErrTaskIDConflict) while the two paths stay two tasks.
func CleanupTaskID(typ string, c Cleanup) string {
	return typ + ":" + c.Path + ":" + c.EvalID + ":" + c.Token
}

// NewCleanup builds a cleanup task of type TypeCleanupSuccess or
// TypeCleanupFailure: its pool's cleanup queue, many retries, and a task ID that makes a
// duplicate enqueue a no-op.
func NewCleanup(typ string, c Cleanup) (*asynq.Task, error) {
	if typ != TypeCleanupSuccess && typ != TypeCleanupFailure {
		return nil, fmt.Errorf("%w: %q is not a cleanup task type", ErrBadPayload, typ)
	}
	c.Pool = poolOrDefault(c.Pool)
	if err := c.validate(); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("%w: cleanup of eval %s: %w", ErrBadPayload, c.EvalID, err)
	}
	return asynq.NewTask(typ, payload,
		asynq.Queue(Queues(c.Pool).Cleanup),
		asynq.TaskID(CleanupTaskID(typ, c)),
		asynq.MaxRetry(CleanupMaxRetry),
		asynq.Retention(CleanupRetention),
	), nil
}

// ParseCleanup decodes and validates a cleanup payload.
func ParseCleanup(data []byte) (Cleanup, error) {
	var c Cleanup
	if err := decodePayload(data, &c); err != nil {
		return Cleanup{}, err
	}
	c.Pool = poolOrDefault(c.Pool)
	return c, c.validate()
}

// Reap is the payload of TypeReap.
type Reap struct {
	Pool string `json:"pool"`
}

// NewReap builds the periodic reap task of a pool, on its maintenance queue.
func NewReap(pool string) (*asynq.Task, error) {
	pool = poolOrDefault(pool)
	if err := validatePool(pool); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(Reap{Pool: pool})
	if err != nil {
		return nil, fmt.Errorf("%w: reap: %w", ErrBadPayload, err)
	}
	return asynq.NewTask(TypeReap, payload, asynq.Queue(Queues(pool).Maintenance), asynq.MaxRetry(0)), nil
}

// ParseReap decodes a reap payload. A payload that names no pool is the
// default pool's.
func ParseReap(data []byte) (Reap, error) {
	var r Reap
	if err := decodePayload(data, &r); err != nil {
		return Reap{}, err
	}
	r.Pool = poolOrDefault(r.Pool)
	return r, validatePool(r.Pool)
}

// decodePayload decodes one JSON object. Unknown fields are ignored: in a
// rolling upgrade a producer one version ahead of the workers adds fields,
// and refusing them would archive every eval it sends. What the fields hold
// is still checked by each payload's validate.
func decodePayload(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %w", ErrBadPayload, err)
	}
	return nil
}
