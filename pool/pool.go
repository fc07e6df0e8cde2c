// Package pool keeps a fixed set of executors in Redis and leases them to
// evals, one eval per executor at a time.
//
// Every change is one Lua script (package lua), so a change is atomic and no
// client sees half of it. A lease carries a random token and a fencing number:
// release is owner-checked by the token, so a late or duplicate release of an
// executor that has since been leased to another eval changes nothing
// (StaleLease) instead of freeing the other eval's executor; the fencing
// number lets the executor itself refuse a zombie holder. Leases are short and
// renewed, and a lease that is not renewed in time is reclaimed by Reap and
// by the next Acquire, so an executor whose holder died comes back without
// anyone releasing it.
//
// The package knows Redis and Lua and nothing of Asynq.
package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/internal/keys"
	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/lua"
)

// Sentinel errors, wrapped with context; check them with errors.Is.
var (
	// ErrNoExecutor means every executor is leased (or none is registered).
	ErrNoExecutor = errors.New("pool: no executor available")
	// ErrLeaseLost means the lease ended before the renew: released,
	// reclaimed after its deadline, or taken over by a newer attempt of the
	// same eval. Its holder must stop using the executor.
	ErrLeaseLost = errors.New("pool: lease lost")
	// ErrWaiting means no executor was free and the eval is in the pool's
	// wait list: the next executor freed is leased to it (AcquireArgs.Wait).
	// It is also ErrNoExecutor.
	ErrWaiting = fmt.Errorf("%w, waiting for one", ErrNoExecutor)
	// ErrUnknownExecutor means the URL is not registered in the pool.
	ErrUnknownExecutor = errors.New("pool: unknown executor")
	// ErrInvalid means an argument was refused before Redis was touched.
	ErrInvalid = errors.New("pool: invalid argument")
	// ErrForeignData means a key of the pool holds data of another type, or
	// a fence that is not an integer: something other than evalpool wrote
	// there. It is an operator's error, not a fault the pool defends
	// against: the operation stopped where it met the key, possibly after
	// some of its writes, and Check names every such key.
	ErrForeignData = errors.New("pool: foreign data under the pool's keys")
	// errOlderLayout means a script met a pool of an older release's
	// layout: Migrate brings it to this one.
	errOlderLayout = errors.New("pool: the pool is an older release's")
	// ErrPoolMissing means the pool's epoch marker is gone: the pool was
	// never created (no executor was ever registered), or its data was lost
	// (FLUSHALL, an evicting Redis, a restart without persistence).
	// Registering executors creates it again.
	ErrPoolMissing = errors.New("pool: the pool's data is missing (never created, or lost)")
	// ErrCancelled means the eval was cancelled (Cancel): it is never
	// given an executor again.
	ErrCancelled = errors.New("pool: eval cancelled")
)

// cancelledFor is how long Cancel remembers a cancelled eval: longer than
// any eval is retried.
const cancelledFor = 7 * 24 * time.Hour

// Cancel marks evals cancelled: from now on Acquire refuses them
// (ErrCancelled), so that an eval cancelled while Asynq still holds it, or
// hands it to a worker, never reaches an executor. A lease an eval holds
// already is not touched: its worker stops the call (Asynq's cancelation)
// and releases it. Marks older than a week are dropped.
func (p *Pool) Cancel(ctx context.Context, evalIDs ...string) error {
	if len(evalIDs) == 0 {
		return nil
	}
	now, err := p.client.Time(ctx).Result()
	if err != nil {
		return fmt.Errorf("pool: cancel %d evals: %w", len(evalIDs), err)
	}
	members := make([]redis.Z, len(evalIDs))
	for i, id := range evalIDs {
		members[i] = redis.Z{Score: float64(now.UnixMilli()), Member: id}
	}
	_, err = p.client.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.ZAdd(ctx, p.keys.Cancelled(), members...)
		pipe.ZRemRangeByScore(ctx, p.keys.Cancelled(), "-inf", strconv.FormatInt(now.Add(-cancelledFor).UnixMilli(), 10))
		return nil
	})
	if err != nil {
		return fmt.Errorf("pool: cancel %d evals: %w", len(evalIDs), err)
	}
	return nil
}

// Cancelled reports whether Cancel marked the eval.
func (p *Pool) Cancelled(ctx context.Context, evalID string) (bool, error) {
	err := p.client.ZScore(ctx, p.keys.Cancelled(), evalID).Err()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("pool: is eval %s cancelled: %w", evalID, err)
	}
	return true, nil
}

// scriptErr turns a script's refusals into the package's sentinel errors.
// Redis's WRONGTYPE, which a script meets on a key of another type, is
// ErrForeignData.
func scriptErr(err error) error {
	if RedisFull(err) == ErrRedisFull {
		return ErrRedisFull
	}
	if redis.HasErrorPrefix(err, "WRONGTYPE") {
		return fmt.Errorf("%w (pool check names the key): %s", ErrForeignData, err.Error())
	}
	for prefix, sentinel := range map[string]error{"EVALPOOL_FOREIGN_DATA": ErrForeignData, "EVALPOOL_NO_POOL": ErrPoolMissing, "EVALPOOL_UNSERVABLE": ErrUnservable, "EVALPOOL_BAD_LABELS": ErrInvalid, "EVALPOOL_CANCELLED": ErrCancelled, "EVALPOOL_MIGRATE": errOlderLayout} {
		if redis.HasErrorPrefix(err, prefix) {
			return fmt.Errorf("%w: %s", sentinel, strings.TrimPrefix(err.Error(), prefix+" "))
		}
	}
	return err
}

// MaxLeaseTTL bounds a lease's TTL: a lease is renewed while its holder
// runs, so a long TTL only delays the return of a dead holder's executor.
const MaxLeaseTTL = 24 * time.Hour

// Defaults of Options.
const (
	DefaultName         = "default"
	DefaultReclaimBatch = 16
	reapBatch           = 1000
	registerChunk       = 1000 // executors per register call, so that Redis is never blocked for long
)

// Options configure a Pool. The zero value is usable.
type Options struct {
	// Name names the pool; all of its keys share the hash tag {Name}, so one
	// Redis (or cluster) can hold many pools. It may not contain '{' or '}'.
	// Defaults to "default".
	Name string
	// ReclaimBatch bounds how many expired leases one Acquire reclaims before
	// it leases, so that Acquire stays cheap however many leases expired at
	// once; Reap reclaims the rest. Defaults to 16.
	ReclaimBatch int
	// Logger receives the "double release detected" warnings. Defaults to a
	// logger that discards everything.
	Logger *zerolog.Logger
	// Metrics counts every operation's outcome. Defaults to a private set that
	// nobody scrapes; to export them, pass NewMetrics() and register it:
	// reg.MustRegister(m.Collectors()...).
	Metrics *Metrics
}

func (o *Options) validate() error {
	if strings.ContainsAny(o.Name, "{},") || strings.ContainsFunc(o.Name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("%w: pool name %q may not contain '{', '}', ',', spaces or control characters", ErrInvalid, o.Name)
	}
	if o.ReclaimBatch < 0 {
		return fmt.Errorf("%w: ReclaimBatch may not be negative, got %d", ErrInvalid, o.ReclaimBatch)
	}
	return nil
}

// Pool is a handle on one pool in Redis. It is safe for concurrent use and
// holds no state of its own beyond the client: any number of processes may
// use the same pool at once.
type Pool struct {
	client redis.UniversalClient
	name   string
	keys   keys.Pool
	// script is keys.Script(), made once: every script call takes it.
	script  []string
	reclaim int
	log     zerolog.Logger
	metrics *Metrics
	// migrated is set once Migrate found or made the pool this release's:
	// the first acquire of a handle migrates first.
	migrated atomic.Bool
}

// New returns a handle on the pool named by opts.Name. It does not touch
// Redis. Any go-redis UniversalClient works: standalone, Sentinel, Cluster.
func New(client redis.UniversalClient, opts Options) (*Pool, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	p := &Pool{
		client:  client,
		name:    opts.Name,
		reclaim: opts.ReclaimBatch,
		log:     zerolog.Nop(),
		metrics: opts.Metrics,
	}
	if p.name == "" {
		p.name = DefaultName
	}
	if p.reclaim == 0 {
		p.reclaim = DefaultReclaimBatch
	}
	if opts.Logger != nil {
		p.log = *opts.Logger
	}
	if p.metrics == nil {
		p.metrics = NewMetrics()
	}
	p.keys = keys.ForPool(p.name)
	p.script = p.keys.Script()
	return p, nil
}

// Name is the pool's name.
func (p *Pool) Name() string { return p.name }

// WakeKey is the list a worker's waiting evals get their grants on: one per
// worker process, in the pool's hash slot, read by one blocking connection.
func (p *Pool) WakeKey(worker string) string { return p.keys.Wake(worker) }

// ParseGrant reads a grant the pool pushed to a wake list: a lease handed to
// a waiting eval. Its Expires is zero: the pool granted it at a moment this
// process does not know, so the waiter renews it before use.
func ParseGrant(msg string) (Lease, error) {
	f := strings.Split(msg, "\t")
	if len(f) != 6 {
		return Lease{}, fmt.Errorf("%w: grant %q: want 6 fields", ErrForeignData, msg)
	}
	var n [3]int64
	for i, s := range f[3:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return Lease{}, fmt.Errorf("%w: grant %q: %w", ErrForeignData, msg, err)
		}
		n[i] = v
	}
	return Lease{EvalID: f[0], Token: f[1], URL: f[2], Fence: n[0], Deadline: time.UnixMilli(n[1]), AcquiredAt: time.UnixMilli(n[2])}, nil
}

// LeaveOutcome says what Leave found.
type LeaveOutcome string

// Leave outcomes.
const (
	// Left: the eval's entry in the wait list is gone.
	Left LeaveOutcome = "left"
	// ReleasedOnLeave: an executor had been handed to the eval; it went to
	// the next waiter, or back to the pool.
	ReleasedOnLeave LeaveOutcome = "released"
	// NotWaiting: nothing waited, or held, under that token.
	NotWaiting LeaveOutcome = "none"
)

// Leave takes an eval that stops waiting out of the wait list; an executor
// handed to it meanwhile under token goes to the next waiter at once. at is
// when Redis ran it.
func (p *Pool) Leave(ctx context.Context, evalID, token string) (out LeaveOutcome, at time.Time, err error) {
	if err := p.current(ctx); err != nil {
		return "", time.Time{}, err
	}
	vals, err := lua.Leave.Run(ctx, p.client, p.script, evalID, token).Slice()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("pool: eval %s leaves the wait list: %w", evalID, scriptErr(err))
	}
	return LeaveOutcome(vals[0].(string)), time.UnixMilli(vals[1].(int64)), nil
}

// Epoch reads the pool's epoch marker: a random value written by the first
// Register. It is empty when the pool was never created or its data was
// lost; a value that changes under a running worker means the pool was lost
// and created anew.
func (p *Pool) Epoch(ctx context.Context) (string, error) {
	v, err := p.client.Get(ctx, p.keys.Epoch()).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("pool: read the epoch of %s: %w", p.name, err)
	}
	return v, nil
}

// Migration is what Migrate did.
type Migration struct {
	// Executors is how many executors it migrated: 0 when the pool was
	// this release's already, or has no executor.
	Executors int
	// Epoch is the pool's marker after it, "" when the pool has none.
	Epoch string
}

// Migrate brings, in place, a pool written by an older release to this
// release's layout (migrate.lua): one that keeps its leases in a hash of
// their own (1932b7a and older), one without an epoch marker (89b3e49 and
// older, or a marker alone evicted), or one whose label indexes are kept per
// subset of each executor's labels. Leases in flight are kept. It reads the
// epoch in the same call, for a worker's tick. Register, Relabel, CanServe
// and the first change of a Pool migrate it themselves; a worker migrates
// its pools at each maintenance tick.
func (p *Pool) Migrate(ctx context.Context) (Migration, error) {
	return p.migrate(ctx, "")
}

// Rebuild is Migrate that also rebuilds the label sets' indexes and counts
// of a pool of this layout from the executors' records: the repair of a
// lost labelled key (pool check, invariant 8), which no script can notice
// without walking the pool. Executors is how many it read.
func (p *Pool) Rebuild(ctx context.Context) (Migration, error) {
	return p.migrate(ctx, "rebuild")
}

func (p *Pool) migrate(ctx context.Context, how string) (Migration, error) {
	epoch, err := newToken()
	if err != nil {
		return Migration{}, err
	}
	out, err := lua.Migrate.Run(ctx, p.client, p.script, epoch, how).Slice()
	if err != nil {
		return Migration{}, fmt.Errorf("pool: migrate %s: %w", p.name, scriptErr(err))
	}
	p.migrated.Store(true)
	m := Migration{}
	m.Epoch, _ = out[2].(string)
	if out[0] == "migrated" {
		m.Executors = int(out[1].(int64))
	}
	return m, nil
}

// current migrates the pool before a handle's first change to it, so that
// no script of this layout meets an older one's data. A Redis at maxmemory
// refuses the migration: the change goes on, as releases and reaps must,
// and the next call (or a worker's tick) migrates.
func (p *Pool) current(ctx context.Context) error {
	if p.migrated.Load() {
		return nil
	}
	if _, err := p.Migrate(ctx); err != nil && !errors.Is(err, ErrRedisFull) {
		return err
	}
	return nil
}

// Keys lists every Redis key of the pool. They share one hash slot.
func (p *Pool) Keys() []string { return append(p.keys.Script(), p.keys.Reaped()) }

// Executor is what a pool knows of an executor before it registers it.
type Executor struct {
	// URL is the executor's base URL, http or https.
	URL string `json:"url"`
	// Labels say what kind of executor it is (gpu=a100); an eval that
	// requires labels is served only by executors that have them all. At
	// most MaxLabels (ValidateLabels). Registering a known executor with
	// other labels replaces them (Relabeled); nil keeps them.
	Labels map[string]string `json:"labels,omitempty"`
	// InstanceID is the executor's own stable ID, as its health check
	// reports it. A second URL for an instance already in the pool is
	// refused (Duplicate): two spellings of one executor would double-book
	// it. Empty when unknown.
	InstanceID string `json:"instance_id,omitempty"`
}

// ParseURL checks that s is an absolute http(s) URL with a host and returns
// its canonical form, the one under which the pool keys executors: scheme
// and host in lower case, no default port, no leading zeros in the port, a
// cleaned path with no trailing slash. So HTTP://E:080/./ and http://e:80
// are one executor, http://e. Spellings that differ in the host itself
// (localhost and 127.0.0.1) are told apart by the executor's instance ID.
func ParseURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: executor URL %q: %w", ErrInvalid, s, err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", fmt.Errorf("%w: executor URL %q: scheme must be http or https", ErrInvalid, s)
	}
	if u.Host == "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil || u.Opaque != "" {
		return "", fmt.Errorf("%w: executor URL %q: want scheme://host[:port][/path] and nothing else", ErrInvalid, s)
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if host == "" {
		return "", fmt.Errorf("%w: executor URL %q: no host", ErrInvalid, s)
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return "", fmt.Errorf("%w: executor URL %q: port %q is not in 1-65535", ErrInvalid, s, port)
		}
		port = strconv.FormatUint(n, 10)
		if scheme == "http" && port == "80" || scheme == "https" && port == "443" {
			port = ""
		}
	}
	hostport := host
	if strings.Contains(host, ":") {
		hostport = "[" + host + "]"
	}
	if port != "" {
		hostport = net.JoinHostPort(host, port)
	}
	p := ""
	if u.EscapedPath() != "" {
		p = strings.TrimRight(path.Clean("/"+u.EscapedPath()), "/")
	}
	return scheme + "://" + hostport + p, nil
}

// RegisterOutcome says what Register did with one executor.
type RegisterOutcome string

// Register outcomes.
const (
	// Added: new in the pool, available at once (or, when its record was
	// lost under a live lease, at that lease's end).
	Added RegisterOutcome = "added"
	// AlreadyRegistered: known; left as it is, and a drain of it cancelled.
	AlreadyRegistered RegisterOutcome = "already_registered"
	// RegisteredRelabeled: known, with other labels, which replaced its old
	// ones (a drain of it is cancelled too).
	RegisteredRelabeled RegisterOutcome = "relabeled"
	// Repaired: known, yet neither available nor leased (lost, after keys
	// were deleted or evicted): it is available again.
	Repaired RegisterOutcome = "repaired"
	// Duplicate: its instance ID is in the pool under another URL
	// (Registration.DuplicateOf); nothing changed.
	Duplicate RegisterOutcome = "duplicate"
)

// Registration is what Register did with one executor.
type Registration struct {
	// URL is the executor's canonical URL (ParseURL).
	URL     string          `json:"url"`
	Outcome RegisterOutcome `json:"outcome"`
	// DuplicateOf is the URL the executor is registered under, for
	// Duplicate, and DuplicatePool the pool, which may be another one: an
	// executor in two pools would be leased by both.
	DuplicateOf   string `json:"duplicate_of,omitempty"`
	DuplicatePool string `json:"duplicate_pool,omitempty"`
}

// claim records that pool p registers the executor e, unless another pool
// holds it: then it returns that pool's registration of it. A claim whose
// pool no longer has the executor is stale. Register points the claim at
// the URL its script kept, once it has run, taking stale claims over.
func (p *Pool) claim(ctx context.Context, e Executor) (otherPool, otherURL string, err error) {
	ok, err := p.client.HSetNX(ctx, keys.Instances, e.InstanceID, p.name+" "+e.URL).Result()
	if err != nil || ok {
		return "", "", err
	}
	held, err := p.client.HGet(ctx, keys.Instances, e.InstanceID).Result()
	if err != nil {
		return "", "", err
	}
	pool, url, _ := strings.Cut(held, " ")
	if pool == p.name || (&Options{Name: pool}).validate() != nil {
		return "", "", nil // this pool's own (its script checks the URL), or junk
	}
	registered, err := p.client.HExists(ctx, keys.ForPool(pool).Executors(), url).Result()
	if err != nil || !registered {
		return "", "", err // a stale claim: Register takes it over
	}
	return pool, url, nil
}

// Register adds executors to the pool under their canonical URLs; an
// executor that is already there is left as it is (a drain of it is
// cancelled, and a lost one repaired). An executor whose instance ID is
// registered already, under another URL or in another pool, is refused
// (Duplicate). Every URL is checked before Redis is touched, so a bad one
// registers nothing. A thousand executors are one script call, registered at
// once. The first Register of a pool writes its epoch marker. The
// registrations are in the order of execs.
func (p *Pool) Register(ctx context.Context, execs ...Executor) ([]Registration, error) {
	epoch, err := newToken()
	if err != nil {
		return nil, err
	}
	regs := make([]Registration, len(execs))
	for i, e := range execs {
		if regs[i].URL, err = ParseURL(e.URL); err != nil {
			return nil, err
		}
		if err := ValidateLabels(e.Labels); err != nil {
			return nil, fmt.Errorf("executor %s: %w", regs[i].URL, err)
		}
	}
	if _, err := p.Migrate(ctx); err != nil {
		return nil, err
	}
	// Executors another pool holds are refused here; the script refuses a
	// second URL within this pool, atomically.
	var todo []int
	for i, e := range execs {
		if e.InstanceID != "" {
			e.URL = regs[i].URL
			pool, url, err := p.claim(ctx, e)
			if err != nil {
				return nil, fmt.Errorf("pool: register %s: %w", e.URL, err)
			}
			if pool != "" {
				regs[i].Outcome, regs[i].DuplicateOf, regs[i].DuplicatePool = Duplicate, url, pool
				continue
			}
		}
		todo = append(todo, i)
	}
	for start := 0; start < len(todo); start += registerChunk {
		chunk := todo[start:min(start+registerChunk, len(todo))]
		args := []any{epoch}
		for _, i := range chunk {
			labels, _ := encodeLabels(regs[i].URL, execs[i].Labels)
			args = append(args, regs[i].URL, labels, execs[i].InstanceID)
		}
		out, err := lua.Register.Run(ctx, p.client, p.script, args...).StringSlice()
		if err != nil {
			return nil, fmt.Errorf("pool: register %d executors: %w", len(chunk), scriptErr(err))
		}
		claims := []any{} // instance ID, "pool url": one HSET for the chunk
		for k, o := range out[1:] {
			i := chunk[k]
			r := &regs[i]
			r.Outcome = RegisterOutcome(o)
			if other, ok := strings.CutPrefix(o, string(Duplicate)+" "); ok {
				r.Outcome, r.DuplicateOf, r.DuplicatePool = Duplicate, other, p.name
				continue
			}
			if id := execs[i].InstanceID; id != "" {
				claims = append(claims, id, p.name+" "+r.URL)
			}
		}
		if len(claims) > 0 {
			if err := p.client.HSet(ctx, keys.Instances, claims...).Err(); err != nil {
				return nil, fmt.Errorf("pool: register %d executors: claim their instances: %w", len(chunk), err)
			}
		}
	}
	return regs, nil
}

// encodeLabels is labels as register.lua takes them: a JSON object, or the
// empty string to keep a known executor's (nil).
func encodeLabels(url string, labels map[string]string) (string, error) {
	if labels == nil {
		return "", nil
	}
	b, err := json.Marshal(labels)
	if err != nil {
		return "", fmt.Errorf("%w: labels of %s: %w", ErrInvalid, url, err)
	}
	return string(b), nil
}

// Unregistered returns those of urls (canonical, as ParseURL gives them) that
// are not registered, in one round trip: a command over many executors
// checks them all before it changes any.
func (p *Pool) Unregistered(ctx context.Context, urls ...string) ([]string, error) {
	cmds, err := p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, u := range urls {
			pipe.HExists(ctx, p.keys.Executors(), u)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pool: look up %d executors: %w", len(urls), err)
	}
	var unknown []string
	for i, c := range cmds {
		if !c.(*redis.BoolCmd).Val() {
			unknown = append(unknown, urls[i])
		}
	}
	return unknown, nil
}

// DeregisterOutcome says what Deregister did.
type DeregisterOutcome string

// Deregister outcomes.
const (
	// Removed: the executor was available and is gone.
	Removed DeregisterOutcome = "removed"
	// Draining: the executor is leased; it is never handed out again and
	// leaves the pool when its lease ends (release or reclaim).
	Draining DeregisterOutcome = "draining"
)

// Deregister takes an executor out of the pool without cutting off the eval
// that holds it. An unknown URL is ErrUnknownExecutor.
func (p *Pool) Deregister(ctx context.Context, rawURL string) (DeregisterOutcome, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return "", err
	}
	if err := p.current(ctx); err != nil {
		return "", err
	}
	out, err := lua.Deregister.Run(ctx, p.client, p.script, u).Text()
	if err != nil {
		return "", fmt.Errorf("pool: deregister %s: %w", u, scriptErr(err))
	}
	if out == "unknown" {
		return "", fmt.Errorf("%w: %s", ErrUnknownExecutor, u)
	}
	return DeregisterOutcome(out), nil
}

// Lease is an eval's hold on an executor. Token is the capability to renew
// and release it; Fence, higher for every acquire, is sent to the executor so
// that it can refuse an older holder.
type Lease struct {
	URL        string    `json:"url"`
	EvalID     string    `json:"eval_id"`
	Token      string    `json:"token"`
	Fence      int64     `json:"fence"`
	AcquiredAt time.Time `json:"acquired_at"`
	Deadline   time.Time `json:"deadline"`
	// Reentered is true when the eval already held this executor: a retried
	// attempt got it back under a new token and fence.
	Reentered bool `json:"reentered,omitempty"`
	// Expires is, on this process's monotonic clock, a moment before which
	// the lease surely holds: when the call that granted or last renewed it
	// was sent, plus its TTL. Redis's clock and this one never meet: Redis
	// set the deadline after the call was sent, so the lease ends after
	// Expires. Zero for a lease that did not come from Acquire or Renew.
	Expires time.Time `json:"-"`
}

// Remaining is how long the lease surely holds from now, by Expires; 0 when
// it may have ended.
func (l Lease) Remaining() time.Duration { return max(0, time.Until(l.Expires)) }

// Acquire leases the executor idle longest to evalID for ttl; with none
// free, it first reclaims a bounded batch of leases expired for longer than
// the grace. It
// is re-entrant: an eval that still holds an executor (not yet reclaimed, not
// draining) gets the same one back with a new token and a higher fence, so
// that only the newest attempt of an eval can renew, release or be served.
// With nothing free it returns ErrNoExecutor, or, with args.Wait, joins the
// wait list (ErrWaiting); when the pool's epoch marker is gone,
// ErrPoolMissing.
func (p *Pool) Acquire(ctx context.Context, evalID string, ttl time.Duration, args AcquireArgs) (Lease, error) {
	if args.Wait != (Wait{}) {
		if err := p.checkWait(args.Wait); err != nil {
			return Lease{}, err
		}
	}
	if err := ValidateLabels(args.Require); err != nil {
		return Lease{}, err
	}
	return p.acquire(ctx, evalID, ttl, args)
}

// AcquireArgs are the optional parts of an acquire. The zero value leases
// any executor, or none, at once.
type AcquireArgs struct {
	// Require lists the labels the executor must have, all of them: the
	// eval gets the executor idle longest among those that have them. A set
	// no registered executor has is ErrUnservable. Empty: any executor.
	Require map[string]string
	// Wait, when set, makes an eval that finds no executor free join the
	// pool's FIFO wait list (or keep its place there): the acquire returns
	// ErrWaiting with a Lease holding only its EvalID and Token. Every path
	// that frees an executor then leases it, inside the same script, to the
	// oldest live waiter under that token, and pushes the grant to
	// Wait.Wake (see ParseGrant). A waiter that stops waiting calls Leave,
	// which gives back an executor handed to it in the race.
	Wait Wait
}

// Wait says how an eval that finds no free executor waits for one.
type Wait struct {
	// Wake is the list the pool pushes the eval's grant to: WakeKey of the
	// waiting worker.
	Wake string
	// PlaceTTL is how long the eval's place in the wait list lives unless
	// its next acquire renews it: long enough to cover a hand-back to the
	// queue and the next attempt, so that the eval keeps its place.
	PlaceTTL time.Duration
}

func (p *Pool) checkWait(wait Wait) error {
	if !strings.HasPrefix(wait.Wake, p.keys.WakePrefix()) || wait.PlaceTTL < time.Millisecond {
		return fmt.Errorf("%w: a wait needs a wake key of pool %s and a duration of at least 1ms", ErrInvalid, p.name)
	}
	return nil
}

func (p *Pool) acquire(ctx context.Context, evalID string, ttl time.Duration, args AcquireArgs) (Lease, error) {
	wait := args.Wait
	if evalID == "" {
		return Lease{}, fmt.Errorf("%w: empty eval ID", ErrInvalid)
	}
	if ttl < time.Millisecond || ttl > MaxLeaseTTL {
		return Lease{}, fmt.Errorf("%w: lease TTL must be from 1ms to %s, got %s", ErrInvalid, MaxLeaseTTL, ttl)
	}
	token, err := newToken()
	if err != nil {
		return Lease{}, err
	}
	if err := p.current(ctx); err != nil {
		return Lease{}, err
	}
	var sent time.Time
	run := func() ([]any, error) {
		sent = time.Now()
		vals, err := lua.Acquire.Run(ctx, p.client, p.script, evalID, token, ttl.Milliseconds(), p.reclaim, wait.Wake, wait.PlaceTTL.Milliseconds(), labels.Name(args.Require)).Slice()
		return vals, scriptErr(err)
	}
	vals, err := run()
	// An older release wrote the pool again since this handle migrated it,
	// or its marker alone was lost: migrated, it is asked once more.
	if errors.Is(err, ErrPoolMissing) || errors.Is(err, errOlderLayout) {
		if m, merr := p.Migrate(ctx); merr == nil && m.Executors > 0 {
			vals, err = run()
		}
	}
	if errors.Is(err, redis.Nil) {
		p.metrics.acquires.WithLabelValues(p.name, "none").Inc()
		return Lease{}, ErrNoExecutor
	}
	if errors.Is(err, ErrCancelled) {
		p.metrics.acquires.WithLabelValues(p.name, "cancelled").Inc()
		return Lease{}, err
	}
	if errors.Is(err, ErrUnservable) {
		p.metrics.acquires.WithLabelValues(p.name, "unservable").Inc()
		return Lease{}, fmt.Errorf("eval %s: %w", evalID, err)
	}
	if errors.Is(err, ErrPoolMissing) {
		// No executor can be had, for a reason to say out loud: callers that
		// wait for a free executor wait, and can tell this case apart.
		p.metrics.acquires.WithLabelValues(p.name, "pool_missing").Inc()
		return Lease{}, fmt.Errorf("%w: pool %s: %w", ErrNoExecutor, p.name, err)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("pool: acquire for eval %s: %w", evalID, err)
	}
	if len(vals) == 2 {
		p.metrics.acquires.WithLabelValues(p.name, "waiting").Inc()
		return Lease{EvalID: evalID, Token: token}, fmt.Errorf("%w: eval %s is number %d in line", ErrWaiting, evalID, vals[1].(int64)+1)
	}
	l := Lease{
		URL:        vals[0].(string),
		EvalID:     evalID,
		Token:      vals[1].(string),
		Fence:      vals[2].(int64),
		Deadline:   time.UnixMilli(vals[3].(int64)),
		AcquiredAt: time.UnixMilli(vals[4].(int64)),
		Reentered:  vals[6].(int64) == 1,
		Expires:    sent.Add(ttl),
	}
	if l.Reentered {
		p.metrics.acquires.WithLabelValues(p.name, "reentered").Inc()
	} else {
		p.metrics.acquires.WithLabelValues(p.name, "acquired").Inc()
	}
	return l, nil
}

// Renew moves the lease's deadline to ttl from now (Redis's clock) and
// returns the lease with its new deadline. A lease that has ended, or whose
// deadline has passed even if nobody reclaimed it yet, is ErrLeaseLost: its
// holder must stop, because the executor may already be someone else's.
func (p *Pool) Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	rs := []Renewal{{Lease: l, TTL: ttl}}
	if err := p.RenewAll(ctx, rs); err != nil {
		return l, err
	}
	return rs[0].Lease, rs[0].Err
}

// A Renewal asks RenewAll to renew one lease for TTL, and holds the answer.
type Renewal struct {
	Lease Lease
	TTL   time.Duration
	// Err is set by RenewAll: nil when Lease has its new deadline, or
	// ErrLeaseLost, as for Renew.
	Err error
}

// RenewAll renews many leases in one round trip and one script, so that a
// worker holding hundreds of leases sends one heartbeat, not hundreds. Each
// renewal gets its own answer in Err; the error RenewAll returns is for the
// call as a whole (Redis unreachable, a TTL below 1ms), and then no lease was
// renewed.
func (p *Pool) RenewAll(ctx context.Context, rs []Renewal) error {
	if len(rs) == 0 {
		return nil
	}
	args := make([]any, 0, 3*len(rs))
	for _, r := range rs {
		if r.TTL < time.Millisecond {
			return fmt.Errorf("%w: lease TTL must be at least 1ms, got %s for %s", ErrInvalid, r.TTL, r.Lease.URL)
		}
		args = append(args, r.Lease.URL, r.Lease.Token, r.TTL.Milliseconds())
	}
	sent := time.Now()
	if err := p.current(ctx); err != nil {
		return err
	}
	deadlines, err := lua.Renew.Run(ctx, p.client, p.script, args...).Int64Slice()
	if err != nil {
		if len(rs) == 1 {
			return fmt.Errorf("pool: renew %s for eval %s: %w", rs[0].Lease.URL, rs[0].Lease.EvalID, scriptErr(err))
		}
		return fmt.Errorf("pool: renew %d leases: %w", len(rs), scriptErr(err))
	}
	if len(deadlines) != len(rs) {
		return fmt.Errorf("pool: renew %d leases: the script answered for %d", len(rs), len(deadlines))
	}
	for i, d := range deadlines {
		r := &rs[i]
		if d == 0 {
			p.metrics.renewals.WithLabelValues(p.name, "lost").Inc()
			r.Err = fmt.Errorf("%w: %s for eval %s", ErrLeaseLost, r.Lease.URL, r.Lease.EvalID)
			continue
		}
		p.metrics.renewals.WithLabelValues(p.name, "renewed").Inc()
		r.Lease.Deadline = time.UnixMilli(d)
		r.Lease.Expires = sent.Add(r.TTL)
		r.Err = nil
	}
	return nil
}

// ReleaseOutcome says what a release found.
type ReleaseOutcome string

// Release outcomes. Only Released changes the pool.
const (
	// Released: the token held the lease; the executor is available again,
	// or gone if it was draining.
	Released ReleaseOutcome = "released"
	// AlreadyInPool: the executor is already available. A double release.
	AlreadyInPool ReleaseOutcome = "already_in_pool"
	// StaleLease: another lease holds the executor now; it keeps it. A
	// double release, and the one the original LIST design got wrong.
	StaleLease ReleaseOutcome = "stale_lease"
	// NotLeased: the executor is unknown, removed, or neither leased nor
	// available.
	NotLeased ReleaseOutcome = "not_leased"
	// DuplicateRelease is not an outcome of the script but the label
	// evalpool_release_total counts a Duplicate release under, whatever
	// the executor's state: the expected second path of a lease.
	DuplicateRelease ReleaseOutcome = "duplicate"
)

// ReleaseResult is what Release found and did.
type ReleaseResult struct {
	Outcome ReleaseOutcome `json:"outcome"`
	// Double is true for AlreadyInPool and StaleLease that are not a
	// Duplicate: a holder that outlived its lease, a late callback
	// replayed, an old token. Worth an alert: counted in
	// evalpool_double_release_total and logged at warn level.
	Double bool `json:"double"`
	// Duplicate is true for AlreadyInPool, StaleLease or NotLeased by a
	// cleanup (ReleaseArgs.ByCleanup) whose lease did not end otherwise
	// than by its release (the pool remembers the last 100,000 that did):
	// the second path of one lease (--cleanup both, a failed attempt's two
	// cleanups, an attempt a re-entry replaced). Absorbed like any,
	// counted under the outcome "duplicate" of evalpool_release_total,
	// logged at debug level. docs/design.md, §5.2, tells the rule.
	Duplicate bool `json:"duplicate,omitempty"`
	// Removed is true when the release ended a drain: the executor left.
	Removed bool `json:"removed,omitempty"`
	// Holder is the eval that holds the executor, for StaleLease.
	Holder string `json:"holder,omitempty"`
	// At is when Redis ran the release.
	At time.Time `json:"at"`
	// SinceLastRelease is how long before At the executor last became
	// available (released, reclaimed or registered); 0 when unknown.
	SinceLastRelease time.Duration `json:"since_last_release"`
	// Quarantined is why this release took the executor out of service
	// (ReasonUnavailable, ReasonFailRate); empty when it did not.
	Quarantined string `json:"quarantined,omitempty"`
}

// Verdict is what an attempt made of its executor. The release that ends
// the lease records it: the pool counts an executor's failed calls in a row
// and its graded results, and quarantines it by the pool's Settings
// (QuarantineAfter, QuarantineFailRate).
type Verdict string

// Verdicts.
const (
	// VerdictNone: nothing to say of the executor (the attempt was
	// cancelled, lost its lease, ...).
	VerdictNone Verdict = ""
	// VerdictPassed and VerdictFailed: the executor served the eval and
	// graded it; a failed grade is the eval's, not the executor's fault.
	VerdictPassed Verdict = "passed"
	VerdictFailed Verdict = "failed"
	// VerdictErrored: the executor served the call and answered that the
	// eval has no grade by its own fault (its grader crashed, ran out of
	// time, gave no result). It ends a streak of unavailable calls, and
	// counts in no pass rate.
	VerdictErrored Verdict = "errored"
	// VerdictUnavailable: the executor did not serve the call: refused
	// connection, timeout, 5xx, a malformed answer.
	VerdictUnavailable Verdict = "unavailable"
)

// ReleaseArgs are the optional parts of a release.
type ReleaseArgs struct {
	// Path names the caller's route to the release ("success", "failure",
	// "cli", ...) for metrics and logs.
	Path    string
	Verdict Verdict
	// Retrying says the eval will be tried again: after VerdictUnavailable
	// or VerdictErrored its next acquire prefers another executor when one
	// is free.
	Retrying bool
	// ByCleanup says the release comes from one of the worker's cleanups,
	// which release a lease twice at times by design: see
	// ReleaseResult.Duplicate.
	ByCleanup bool
	// Pipelined adds commands to send in the same round trip as the release,
	// ahead of it: the worker's inline release writes the eval's result with
	// it, so that an eval costs one round trip fewer. Their replies and
	// errors are read from the commands Pipelined added; the release's own
	// error is the only one Release returns. Nil sends the release alone.
	Pipelined func(pipe redis.Pipeliner)
}

// Release gives the leased executor back, if and only if l still holds it.
// It is idempotent: a second release, or a release by a holder whose lease
// was reclaimed and given to someone else, changes nothing and says so in
// its outcome, which is not an error. Every outcome is counted, and a double
// release is logged at warn level. The release that ends the lease records
// args.Verdict, and may take the executor out of service
// (ReleaseResult.Quarantined).
func (p *Pool) Release(ctx context.Context, l Lease, args ReleaseArgs) (ReleaseResult, error) {
	path := args.Path
	retrying := "0"
	if args.Retrying {
		retrying = "1"
	}
	designed := "0"
	if args.ByCleanup {
		designed = "1"
	}
	if err := p.current(ctx); err != nil {
		return ReleaseResult{}, err
	}
	argv := []any{l.URL, l.Token, string(args.Verdict), retrying, designed}
	var cmd *redis.Cmd
	if args.Pipelined != nil {
		// The pipeline's error is the first of any command's: the release's
		// own is read from its command. A server that lost the library or
		// the script (a restarted Redis), or no longer serves this client
		// the library, says so; Run then loads it, or sends the script.
		_, _ = p.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			args.Pipelined(pipe)
			cmd = lua.Release.Pipe(ctx, p.client, pipe, p.script, argv...)
			return nil
		})
	}
	if cmd == nil || lua.NotRun(cmd.Err()) {
		cmd = lua.Release.Run(ctx, p.client, p.script, argv...)
	}
	vals, err := cmd.Slice()
	if err != nil {
		return ReleaseResult{}, fmt.Errorf("pool: release %s for eval %s: %w", l.URL, l.EvalID, scriptErr(err))
	}
	r := ReleaseResult{
		Outcome:     ReleaseOutcome(vals[0].(string)),
		At:          time.UnixMilli(vals[1].(int64)),
		Holder:      vals[3].(string),
		Removed:     vals[4].(int64) == 1,
		Quarantined: vals[5].(string),
		Duplicate:   vals[6].(int64) == 1,
	}
	if last := vals[2].(int64); last >= 0 {
		r.SinceLastRelease = r.At.Sub(time.UnixMilli(last))
	}
	r.Double = (r.Outcome == AlreadyInPool || r.Outcome == StaleLease) && !r.Duplicate
	outcome := r.Outcome
	if r.Duplicate {
		outcome = DuplicateRelease
	}
	p.metrics.releases.WithLabelValues(p.name, string(outcome), metricPath(path)).Inc()
	if r.Double {
		p.metrics.doubles.WithLabelValues(p.name, metricPath(path)).Inc()
		p.log.Warn().
			Str("pool", p.name).
			Str("executor", l.URL).
			Str("eval", l.EvalID).
			Str("path", path).
			Str("outcome", string(r.Outcome)).
			Str("holder", r.Holder).
			Dur("since_last_release", r.SinceLastRelease).
			Msg("double release detected")
	}
	if r.Duplicate {
		p.log.Debug().Str("pool", p.name).Str("executor", l.URL).Str("eval", l.EvalID).Str("path", path).Msg("duplicate release absorbed: the lease's other path released it")
	}
	if r.Quarantined != "" {
		p.metrics.quarantines.WithLabelValues(p.name, r.Quarantined).Inc()
		p.log.Warn().Str("pool", p.name).Str("executor", l.URL).Str("eval", l.EvalID).Str("reason", r.Quarantined).Msg("executor quarantined")
	}
	return r, nil
}

// Reap reclaims every lease whose deadline passed more than the lease grace
// ago: the executor becomes
// available again, or leaves the pool if it was draining. It works in bounded
// batches so that Redis is never blocked for long, and returns how many it
// reclaimed.
func (p *Pool) Reap(ctx context.Context) (int, error) {
	if err := p.current(ctx); err != nil {
		return 0, err
	}
	total := 0
	for {
		n, err := lua.Reap.Run(ctx, p.client, p.script, reapBatch).Int()
		if err != nil {
			return total, fmt.Errorf("pool: reap: %w", scriptErr(err))
		}
		total += n
		p.metrics.reaped.WithLabelValues(p.name).Add(float64(n))
		if n < reapBatch {
			return total, nil
		}
	}
}

// ReapEvery is Reap at most once per interval across every caller of the
// pool: a worker fleet whose schedulers all fire reaps the pool once. ran is
// false when another caller reaped within the interval.
func (p *Pool) ReapEvery(ctx context.Context, interval time.Duration) (n int, ran bool, err error) {
	if interval < time.Millisecond {
		return 0, false, fmt.Errorf("%w: reap interval must be at least 1ms, got %s", ErrInvalid, interval)
	}
	ok, err := p.client.SetNX(ctx, p.keys.Reaped(), 1, interval).Result()
	if err != nil {
		return 0, false, fmt.Errorf("pool: reap: %w", err)
	}
	if !ok {
		return 0, false, nil
	}
	n, err = p.Reap(ctx)
	return n, true, err
}

func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("pool: lease token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
