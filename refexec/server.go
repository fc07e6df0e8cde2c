package refexec

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/executor"
)

// Options configure the reference executor. The zero value simulates an
// executor that passes every eval at once, accepts unsigned requests, and
// serves within the default limits.
type Options struct {
	// Exec, when set, is a shell command run per eval (sh -c): the spec on
	// its stdin, a JSON result as the last JSON object line of its stdout
	// or in the file named by $EVALPOOL_RESULT_FILE; the rest of its
	// output is log. An exit other than 0 (but the shell's 125 to 127: it
	// could not be run), no result, or running out of time make the eval
	// errored, answered as a result; see [executor] for whose fault is
	// what. It runs in a process group of its own, killed whole at the
	// caller's deadline (a little before: its errored result must reach
	// the caller), at a preemption, or when the eval's lease passes. On
	// Linux the group is also killed when the executor dies; elsewhere
	// StateDir ends it at the next start.
	Exec string
	// Tail is how many bytes of the end of each of an Exec command's stdout
	// (its result taken out) and stderr go with its result, as its log.
	// The caller stores them with every result: keep it small. At most
	// executor.MaxTailBytes. Defaults to DefaultTail (2 KiB); negative
	// sends none.
	Tail int
	// StateDir, with Exec, is the directory where the executor notes each
	// running command's process group, so that an executor started again
	// on it ends, before it serves, the commands its predecessor left
	// running (killed, it could not): otherwise they would run beside the
	// next eval. Serve creates it, owner only, and locks it: one executor
	// per directory (a Server used as a handler alone needs it to exist). A group is killed only if its leader is the process
	// noted (by its start time), never one that reused the ID; a command
	// that leaves its process group is not followed. Unix only. Empty
	// means none: what a killed executor leaves runs on. `evalpool
	// executor` defaults it to a directory under os.TempDir() named by
	// the listen address.
	StateDir string
	// Latency is how long a simulated eval takes, unless its spec says
	// otherwise with a "sleep_ms" field (load tests mix short and long
	// evals that way). Ignored with Exec.
	Latency time.Duration
	// FailRate is the share of simulated evals that fail with a 500, in
	// [0, 1]. Ignored with Exec.
	FailRate float64
	// GradeFailRate is the share of simulated evals that run and are graded
	// failed (score 0), in [0, 1], unless the spec says {"grade": "passed"
	// or "failed"}. A spec's "metrics" (an object of numbers) are answered
	// as the grade's. Ignored with Exec.
	GradeFailRate float64
	// Logger receives a line per eval. Defaults to discarding.
	Logger *zerolog.Logger
	// Secret, when set, is the key every POST must be signed with (see
	// [executor.SignV2]): one without a valid signature is refused with a
	// 401 before its body is read, and before it can touch the fence or the
	// running eval. Without a secret, anyone who reaches the executor can
	// run evals on it (`evalpool executor` refuses to listen beyond
	// loopback without one). Defaults to none.
	Secret []byte
	// Hosts are the names this executor is reached by, as host:port or as
	// a bare host (on Serve's listen port; on any port for a Server used
	// as a handler alone): a v2 signature is refused unless the host it
	// was signed for, the host:port the caller dialed, is one of them or
	// one Serve adds (the listen address, the loopback names when it
	// listens on loopback or on every interface, the interfaces' addresses
	// when on every interface, and os.Hostname). A request signed for
	// another executor with the same secret is thus refused. Defaults to
	// none: a Server used as a handler alone, with none, takes any host.
	Hosts []string
	// SignatureWindow is how far the time a v2 signature was signed at may
	// be from this executor's clock, either way: a signed request replayed
	// later is refused (401). Defaults to
	// [executor.DefaultSignatureWindow], 5 minutes.
	SignatureWindow time.Duration
	// AcceptV1 accepts v1 signatures ([executor.Sign]) beside v2: they
	// name neither the executor nor a time, so a v1 request can be
	// replayed to any executor with the same secret. Only for a rolling
	// upgrade from workers that sign v1 (design.md). Defaults to false.
	AcceptV1 bool
	// FenceAhead bounds how far a fence may be ahead of this executor's
	// clock in unix ms: a fence further ahead is refused (400) and not
	// recorded, since no pool grants one (see [executor.MaxFenceAhead]).
	// Defaults to executor.MaxFenceAhead, 24 hours.
	FenceAhead time.Duration
	// InstanceID names this executor in GET /healthz, so that a caller can
	// tell a restarted executor, which forgot every fence and lease, from
	// the one it knew. Defaults to a random ID made by New.
	InstanceID string
	// Now is the executor's wall clock: it stamps every answer
	// (executor.TimeHeader) and reads the wall times of requests (the
	// deadline, sent_at_ms); durations use the monotonic clock whatever it
	// says. Tests set one off by seconds. Defaults to time.Now.
	Now func() time.Time

	// MaxConns caps the connections Serve keeps open at once. A
	// connection is unauthenticated until a request on it passes the
	// signature check (with no Secret: is a POST that passes the header
	// checks); when the cap is reached, a new connection closes the oldest
	// unauthenticated one to take its place, and waits in the kernel's
	// backlog only when every open connection is authenticated. So clients
	// without the secret cannot starve the workers' connections, however
	// many they open or however slowly they send. A body is read only once
	// its signature's head is verified, so an unauthenticated connection
	// costs its headers ([maxHeaderBytes]) at most. A Fleet allows
	// MaxConns per executor. Defaults to 64.
	MaxConns int
	// ReadHeaderTimeout bounds reading a request's headers in Serve.
	// Defaults to 5s.
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds reading a request's body once its headers passed
	// the checks, so that a trickled body holds its connection this long at
	// most; a slow body is answered 408. The eval that follows is not bound
	// by it. Defaults to 5s.
	BodyTimeout time.Duration
	// ReadTimeout bounds reading a whole request, headers and body, in
	// Serve. Defaults to 30s.
	ReadTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long in Serve,
	// giving its slot back. Defaults to 60s.
	IdleTimeout time.Duration
	// ShutdownTimeout is how long Serve waits for running requests once its
	// context ends before it closes their connections. Defaults to 5s.
	ShutdownTimeout time.Duration

	// stopDelay is how long a simulated eval takes to stop once cancelled,
	// as a command slow to die would: tests use it to look at an executor
	// whose old eval is still stopping.
	stopDelay time.Duration
}

// maxLease bounds lease_ms: a week is far more than any lease, and keeps the
// duration well inside time.Duration.
const maxLease = 7 * 24 * time.Hour

func (o *Options) validate() error {
	if o.Latency < 0 {
		return fmt.Errorf("refexec: latency may not be negative, got %s", o.Latency)
	}
	if o.FailRate < 0 || o.FailRate > 1 || o.GradeFailRate < 0 || o.GradeFailRate > 1 {
		return fmt.Errorf("refexec: fail rates must be in [0, 1], got %g and %g", o.FailRate, o.GradeFailRate)
	}
	if len(o.InstanceID) > 128 || strings.IndexFunc(o.InstanceID, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0 {
		return fmt.Errorf("refexec: instance ID must be at most 128 printable characters without spaces, got %q", o.InstanceID)
	}
	if o.Tail > executor.MaxTailBytes {
		return fmt.Errorf("refexec: tail may be at most %d bytes, got %d", executor.MaxTailBytes, o.Tail)
	}
	if o.MaxConns < 0 {
		return fmt.Errorf("refexec: max conns may not be negative, got %d", o.MaxConns)
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"read header timeout", o.ReadHeaderTimeout}, {"body timeout", o.BodyTimeout}, {"read timeout", o.ReadTimeout}, {"idle timeout", o.IdleTimeout},
		{"shutdown timeout", o.ShutdownTimeout}, {"signature window", o.SignatureWindow}, {"fence ahead", o.FenceAhead}} {
		if d.d < 0 {
			return fmt.Errorf("refexec: %s may not be negative, got %s", d.name, d.d)
		}
	}
	for _, h := range o.Hosts {
		if _, _, err := parseHost(h); err != nil {
			return err
		}
	}
	return nil
}

func (o *Options) setDefaults() {
	o.Secret = bytes.Clone(o.Secret) // the caller's slice may change under us
	if o.InstanceID == "" {
		o.InstanceID = rand.Text()
	}
	if o.Tail == 0 {
		o.Tail = DefaultTail
	}
	if o.MaxConns == 0 {
		o.MaxConns = defaultMaxConns
	}
	if o.ReadHeaderTimeout == 0 {
		o.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = defaultReadTimeout
	}
	if o.BodyTimeout == 0 {
		o.BodyTimeout = defaultBodyTimeout
	}
	if o.SignatureWindow == 0 {
		o.SignatureWindow = executor.DefaultSignatureWindow
	}
	if o.FenceAhead == 0 {
		o.FenceAhead = executor.MaxFenceAhead
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = defaultIdleTimeout
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = defaultShutdownTimeout
	}
}

// Stats are the reference executor's counters, served at GET /v1/stats.
type Stats struct {
	// Served counts evals run to an answer (passed, failed, errored or
	// error).
	Served int64 `json:"served"`
	Passed int64 `json:"passed"`
	Failed int64 `json:"failed"`
	// Errored counts evals answered errored: their command failed, ran
	// out of time, or gave no result. Errors counts those answered 500:
	// the executor could not run them.
	Errored int64 `json:"errored"`
	Errors  int64 `json:"errors"`
	// Timeout counts evals stopped at the caller's deadline (504), and
	// commands stopped for time just before it (errored).
	Timeout int64 `json:"timeouts"`
	// Fenced counts requests refused for a fence not above the highest seen.
	Fenced int64 `json:"fenced"`
	// Preempted counts live evals cancelled by a request with a higher
	// fence: by a newer attempt of the same eval, or by another eval (an
	// overlap).
	Preempted int64 `json:"preempted"`
	// Overlaps counts evals of another eval that arrived while an eval held
	// the executor under a live lease: the witness of the pool's double
	// booking. It must stay 0. The newcomer is refused (Busy) and nothing
	// runs twice; only a holder without a lease is preempted instead.
	Overlaps int64 `json:"overlaps"`
	// Busy counts the newcomers refused with 423 because another eval's
	// lease was live.
	Busy int64 `json:"busy"`
	// LeaseExpired counts evals stopped because their lease passed at the
	// executor without an extension.
	LeaseExpired int64 `json:"lease_expired"`
	// Extensions counts leases extended.
	Extensions int64 `json:"extensions"`
	// Unauthorized counts requests refused for a missing or bad signature.
	Unauthorized int64 `json:"unauthorized"`
	// Forbidden counts POSTs refused before any check of their signature:
	// cross-site (403, a browser's) or not JSON (415).
	Forbidden int64 `json:"forbidden"`
	// FarFences counts evals refused (400) for a fence further ahead of
	// the executor's clock than any pool grants; none was recorded.
	FarFences int64 `json:"far_fences"`
	MaxFence  int64 `json:"max_fence"`
	Running   bool  `json:"running"`
}

var (
	errPreempted    = errors.New("preempted by a higher fence")
	errLeaseExpired = errors.New("lease expired at the executor")
	errStaleFence   = errors.New("stale fence")
	errBusy         = errors.New("busy: another eval holds the executor under a live lease")
	errLeaseOver    = errors.New("the lease was over when the request arrived (delayed, replayed, or the clocks differ by more than the lease)")
)

// busyWait is how long a newcomer for another eval waits for a live holder
// to stop before it is refused as busy: the holder's caller may be giving
// the executor up at this very moment (its connection closing), and the
// pool's next holder may be quicker than that news.
const busyWait = 250 * time.Millisecond

// leaseEnd is when a lease of leaseMs, measured by the caller at sentAtMs
// (0: unknown; in this executor's clock as the caller knows it), ends on
// this executor's monotonic clock: no later than received plus leaseMs,
// and no later than sentAtMs plus leaseMs by this executor's wall clock,
// which read wallMs at received, so that a delayed or replayed request
// cannot carry a lease past its end.
func leaseEnd(received time.Time, wallMs, leaseMs, sentAtMs int64) time.Time {
	end := received.Add(time.Duration(leaseMs) * time.Millisecond)
	if sentAtMs > 0 {
		byClock := received.Add(time.Duration(sentAtMs+leaseMs-wallMs) * time.Millisecond)
		if byClock.Before(end) {
			end = byClock
		}
	}
	return end
}

// running is an admitted eval, from its admission until its handler is done
// with it.
type running struct {
	evalID string
	fence  int64
	caller context.Context // the request's: done when the caller leaves
	ctx    context.Context
	cancel context.CancelCauseFunc
	// done is closed once the eval has stopped, and every eval it waited
	// for before it: a newcomer that waits on it waits on them all.
	done chan struct{}

	// Guarded by Server.mu.
	leaseEnd  time.Time // zero: no lease, only the deadline bounds the eval
	timer     *time.Timer
	executing bool
	finished  bool
	completed bool // finished with its context intact: it ran to its end
}

// live reports whether the eval still holds the executor: nothing cancelled
// it (no preemption, its caller is connected, its deadline has not passed)
// and its lease, if it has one, has not passed.
func (r *running) live(now time.Time) bool {
	return r.ctx.Err() == nil && (r.leaseEnd.IsZero() || now.Before(r.leaseEnd))
}

// Server is the reference executor: it runs one eval at a time, refuses
// stale fences, stops evals whose lease passes, and counts overlaps.
type Server struct {
	opts   Options
	log    zerolog.Logger
	mux    *http.ServeMux
	groups groups // the commands running, noted in opts.StateDir

	// hosts are the names a v2 signature may be signed for: opts.Hosts,
	// and those Serve adds. Nil: any.
	hosts atomic.Pointer[hostSet]

	mu     sync.Mutex
	stats  Stats
	holder *running // the eval with the highest fence admitted, until it stops
	// executing and peakExecuting count evals between admission and
	// their end: peakExecuting above 1 would be two evals at once.
	executing, peakExecuting int
}

// New returns the reference executor as an http.Handler.
func New(opts Options) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	s := &Server{opts: opts, log: zerolog.Nop(), mux: http.NewServeMux(), groups: groups{dir: opts.StateDir}}
	if opts.Logger != nil {
		s.log = *opts.Logger
	}
	if len(opts.Hosts) > 0 {
		s.hosts.Store(newHostSet(opts.Hosts, ""))
	}
	s.mux.HandleFunc("POST "+executor.PathEvals, s.handleEval)
	s.mux.HandleFunc("POST "+executor.PathLease, s.handleLease)
	s.mux.HandleFunc("GET "+executor.PathHealth, func(w http.ResponseWriter, _ *http.Request) {
		s.writeJSON(w, http.StatusOK, executor.Health{Status: "ok", InstanceID: s.opts.InstanceID})
	})
	s.mux.HandleFunc("GET "+executor.PathStats, func(w http.ResponseWriter, _ *http.Request) { s.writeJSON(w, http.StatusOK, s.Stats()) })
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// InstanceID is the ID the server reports in GET /healthz.
func (s *Server) InstanceID() string { return s.opts.InstanceID }

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Running = s.holder != nil
	return st
}

// writeJSON answers v with the server's time stamp (executor.TimeHeader),
// as every answer carries it: a caller dates its next requests by it.
func (s *Server) writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(executor.TimeHeader, strconv.FormatInt(s.now().UnixMilli(), 10))
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) httpError(w http.ResponseWriter, code int, format string, args ...any) {
	s.writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// refuse answers 409 with the reason a caller tells apart by
// (executor.Reason).
func (s *Server) refuse(w http.ResponseWriter, reason executor.Reason, format string, args ...any) {
	s.writeJSON(w, http.StatusConflict, map[string]string{"error": fmt.Sprintf(format, args...), "reason": string(reason)})
}

// refuseStale answers 409 stale_fence with the highest fence the executor
// has seen (max_fence), from which a pool whose fence for this executor fell
// behind it raises its own (pool.RaiseFence).
func (s *Server) refuseStale(w http.ResponseWriter, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuseStaleLocked(w, format, args...)
}

func (s *Server) refuseStaleLocked(w http.ResponseWriter, format string, args ...any) {
	s.writeJSON(w, http.StatusConflict, struct {
		Error    string          `json:"error"`
		Reason   executor.Reason `json:"reason"`
		MaxFence int64           `json:"max_fence"`
	}{fmt.Sprintf(format, args...), executor.ReasonStaleFence, s.stats.MaxFence})
}

// now is the server's wall clock.
func (s *Server) now() time.Time {
	if s.opts.Now != nil {
		return s.opts.Now()
	}
	return time.Now()
}

// readBody checks a POST and reads its body, at most
// executor.MaxRequestBytes. In order, each refusal answered at once without
// reading the body, its connection closed: a cross-site request (403) or
// one that is not JSON (415); then, when the server has a secret, a
// missing, malformed or wrong signature, one signed for another host, or
// at a time outside the window (401). Only then does the connection count
// as authenticated (see Options.MaxConns), and the body is read within
// BodyTimeout and checked against the signature's digest. When it returns
// false it has answered the request, and changed nothing but a count.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if crossSite(r.Header) {
		s.count(func(st *Stats) { st.Forbidden++ })
		s.refuseEarly(w, http.StatusForbidden, "cross-site request refused: an executor takes calls from workers, never from a browser (Origin or Sec-Fetch-Site)")
		return nil, false
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		s.count(func(st *Stats) { st.Forbidden++ })
		s.refuseEarly(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return nil, false
	}
	var sig executor.Signature
	if len(s.opts.Secret) > 0 {
		var ok bool
		if sig, ok = s.verifyHead(w, r); !ok {
			return nil, false
		}
	}
	authenticated(r)
	if r.ContentLength > executor.MaxRequestBytes {
		s.refuseEarly(w, http.StatusRequestEntityTooLarge, "body of %d bytes is over the limit of %d", r.ContentLength, executor.MaxRequestBytes)
		return nil, false
	}
	// The server's ReadTimeout bounds the whole request; a body that
	// trickles is cut sooner, so that it holds its slot BodyTimeout at most.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(min(s.opts.BodyTimeout, s.opts.ReadTimeout)))
	body, err := executor.ReadBody(http.MaxBytesReader(w, r.Body, executor.MaxRequestBytes), r.ContentLength, executor.MaxRequestBytes)
	if err == nil && int64(len(body)) > executor.MaxRequestBytes {
		err = &http.MaxBytesError{Limit: executor.MaxRequestBytes}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		var netErr net.Error
		switch {
		case errors.As(err, &tooBig):
			s.httpError(w, http.StatusRequestEntityTooLarge, "body over the limit of %d bytes", executor.MaxRequestBytes)
		case errors.As(err, &netErr) && netErr.Timeout():
			s.httpError(w, http.StatusRequestTimeout, "body not read within %s", min(s.opts.BodyTimeout, s.opts.ReadTimeout))
		default:
			s.httpError(w, http.StatusBadRequest, "read body: %v", err)
		}
		return nil, false
	}
	if len(s.opts.Secret) > 0 && !sig.VerifyBody(s.opts.Secret, r.Method, signedPath(r), r.Header.Get(executor.DeadlineHeader), body) {
		s.unauthorized(w, "bad %s: it does not cover this body", executor.SignatureHeader)
		return nil, false
	}
	return body, true
}

// crossSite reports whether a request came from a web page: a browser
// sends Origin on every cross-site POST, and Sec-Fetch-Site on every
// request; a worker sends neither. A page can POST text/plain to any
// address without a preflight, so the Content-Type check alone would not
// keep it out.
func crossSite(h http.Header) bool {
	if h.Get("Origin") != "" {
		return true
	}
	site := h.Get("Sec-Fetch-Site")
	return site != "" && site != "none" && site != "same-origin"
}

// verifyHead checks a request's signature from its head alone: its format,
// its MAC over the head and the body's digest (v2), the host it was signed
// for, and when. A v1 signature, accepted only with AcceptV1, needs the
// body: it is checked once the body is read.
func (s *Server) verifyHead(w http.ResponseWriter, r *http.Request) (executor.Signature, bool) {
	value := r.Header.Get(executor.SignatureHeader)
	if value == "" {
		s.unauthorized(w, "missing %s header", executor.SignatureHeader)
		return executor.Signature{}, false
	}
	sig, err := executor.ParseSignature(value)
	if err != nil {
		s.unauthorized(w, "malformed %s: want v2=<signed at ms>.<hex sha256 of the body>.<hex hmac>", executor.SignatureHeader)
		return executor.Signature{}, false
	}
	if sig.Version == 1 {
		if !s.opts.AcceptV1 {
			s.unauthorized(w, "%s v1 refused: it names neither the executor nor a time; upgrade the worker, which signs v2", executor.SignatureHeader)
			return executor.Signature{}, false
		}
		return sig, true
	}
	if !sig.VerifyHead(s.opts.Secret, r.Method, r.Host, signedPath(r), r.Header.Get(executor.DeadlineHeader)) {
		s.unauthorized(w, "bad %s", executor.SignatureHeader)
		return executor.Signature{}, false
	}
	if hosts := s.hosts.Load(); hosts != nil && !hosts.has(r.Host, r.TLS != nil) {
		s.unauthorized(w, "%s was signed for host %s, which is not this executor's (it is reached by another name: give it --allowed-hosts)", executor.SignatureHeader, executor.Snippet([]byte(strconv.Quote(r.Host))))
		return executor.Signature{}, false
	}
	now := s.now().UnixMilli()
	if off := time.Duration(sig.SignedAtMs-now) * time.Millisecond; off > s.opts.SignatureWindow || off < -s.opts.SignatureWindow {
		s.unauthorized(w, "%s was signed at %d, %s from this executor's clock (%d): outside the window of ±%s (a replay, or a clock that stepped)",
			executor.SignatureHeader, sig.SignedAtMs, off.Round(time.Second), now, s.opts.SignatureWindow)
		return executor.Signature{}, false
	}
	return sig, true
}

// signedPath is the path a request was signed for: the one on the request
// line, which is what the client sent even when this server is mounted
// under a prefix (a Fleet).
func signedPath(r *http.Request) string {
	if u, err := url.ParseRequestURI(r.RequestURI); err == nil {
		return u.EscapedPath()
	}
	return r.URL.EscapedPath()
}

// refuseEarly answers a request refused before its body was read, and
// closes its connection without reading the body: net/http would otherwise
// read what is left of it, up to 256 KiB, for the connection's next
// request, which a client trickling it could make last ReadTimeout.
func (s *Server) refuseEarly(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
	s.httpError(w, code, format, args...)
}

// deadlineFrom reads the caller's deadline from a request, if it sent one:
// unix ms by this executor's wall clock, which read wallMs at received,
// made a time on the monotonic clock.
func deadlineFrom(r *http.Request, received time.Time, wallMs int64) (time.Time, bool) {
	ms, err := strconv.ParseInt(r.Header.Get(executor.DeadlineHeader), 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}, false
	}
	return received.Add(time.Duration(ms-wallMs) * time.Millisecond), true
}

func (s *Server) unauthorized(w http.ResponseWriter, format string, args ...any) {
	s.count(func(st *Stats) { st.Unauthorized++ })
	s.refuseEarly(w, http.StatusUnauthorized, format, args...)
}

func (s *Server) handleEval(w http.ResponseWriter, r *http.Request) {
	received, wallMs := time.Now(), s.now().UnixMilli()
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req executor.Request
	if err := json.Unmarshal(body, &req); err != nil {
		s.httpError(w, http.StatusBadRequest, "want {\"eval_id\", \"fence\", \"spec\", \"lease_ms\"}: %v", err)
		return
	}
	if req.EvalID == "" || len(req.Spec) == 0 || req.LeaseMs < 0 || req.LeaseMs > maxLease.Milliseconds() {
		s.httpError(w, http.StatusBadRequest, "want a non-empty eval_id and spec, and lease_ms in [0, %d]", maxLease.Milliseconds())
		return
	}
	if ahead := s.opts.FenceAhead.Milliseconds(); req.Fence > wallMs && req.Fence-wallMs > ahead {
		// Recorded, it would refuse every fence a pool grants for as long
		// as the executor lives.
		s.count(func(st *Stats) { st.FarFences++ })
		s.httpError(w, http.StatusBadRequest, "fence %d is more than %s ahead of this executor's clock in ms (%d): no pool grants one; refused, not recorded", req.Fence, s.opts.FenceAhead, wallMs)
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	if d, ok := deadlineFrom(r, received, wallMs); ok {
		var stop context.CancelFunc
		ctx, stop = context.WithDeadline(ctx, d)
		defer stop()
	}
	me := &running{evalID: req.EvalID, fence: req.Fence, caller: r.Context(), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	if req.LeaseMs > 0 {
		me.leaseEnd = leaseEnd(received, wallMs, req.LeaseMs, req.SentAtMs)
		if !me.leaseEnd.After(received) {
			s.count(func(st *Stats) { st.LeaseExpired++ })
			s.refuse(w, executor.ReasonLeaseOverOnArrival, "eval %s fence %d: %v", req.EvalID, req.Fence, errLeaseOver)
			return
		}
	}
	err := s.admit(me)
	switch {
	case errors.Is(err, errStaleFence):
		s.refuseStale(w, "eval %s fence %d: %v", req.EvalID, req.Fence, err)
		return
	case errors.Is(err, errBusy):
		s.httpError(w, http.StatusLocked, "eval %s fence %d: %v", req.EvalID, req.Fence, err)
		return
	}
	start := time.Now()
	var res executor.Result
	if err == nil {
		res, err = s.execute(ctx, req)
		s.finish(me)
	}

	log := s.log.Info().Str("eval", req.EvalID).Int64("fence", req.Fence).Dur("took", time.Since(start))
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errPreempted):
		log.Str("outcome", "preempted").Msg("eval")
		s.refuse(w, executor.ReasonPreempted, "eval %s fence %d: %v", req.EvalID, req.Fence, errPreempted)
		return
	case errors.Is(cause, errLeaseExpired):
		log.Str("outcome", "lease expired").Msg("eval")
		s.refuse(w, executor.ReasonLeaseExpired, "eval %s fence %d: lease expired at the executor: no extension came within the lease; the eval was stopped", req.EvalID, req.Fence)
		return
	case ctx.Err() != nil && r.Context().Err() == nil:
		s.count(func(st *Stats) { st.Served++; st.Timeout++ })
		log.Str("outcome", "timeout").Msg("eval")
		s.httpError(w, http.StatusGatewayTimeout, "eval %s: deadline passed after %s; its command was killed", req.EvalID, time.Since(start).Round(time.Millisecond))
		return
	case err != nil:
		s.count(func(st *Stats) { st.Served++; st.Errors++ })
		log.Str("outcome", "error").Err(err).Msg("eval")
		s.httpError(w, http.StatusInternalServerError, "eval %s: %v", req.EvalID, err)
		return
	}
	s.count(func(st *Stats) {
		st.Served++
		switch res.Status {
		case executor.StatusPassed:
			st.Passed++
		case executor.StatusFailed:
			st.Failed++
		default:
			st.Errored++
		}
	})
	if res.Status == executor.StatusErrored {
		log.Str("error", res.Error)
	}
	log.Str("outcome", res.Status).Msg("eval")
	s.writeJSON(w, http.StatusOK, res)
}

// admit makes an eval the executor's holder if its fence is the highest
// seen, cancels the eval it supersedes, and waits until that one has
// stopped. It returns errStaleFence for a fence not above the highest seen,
// and the cause when the eval was cancelled while it waited (a higher fence,
// its lease, its caller); it is then done with the eval.
func (s *Server) admit(me *running) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev := s.holder; prev != nil && prev.evalID != me.evalID && !prev.leaseEnd.IsZero() && prev.live(time.Now()) {
		// Another eval holds the executor under a live lease: the pool
		// handed it out twice, unless the holder is being given up at this
		// very moment (its caller's connection closing may be slower than
		// the pool's next holder). Wait a little to tell.
		s.mu.Unlock()
		t := time.NewTimer(busyWait)
		select {
		case <-prev.ctx.Done():
		case <-prev.done:
		case <-me.ctx.Done():
		case <-t.C:
		}
		t.Stop()
		s.mu.Lock()
		if prev.completed || prev.caller.Err() == nil {
			// Its caller did not give it up: it was a live holder.
			s.stats.Overlaps++
		}
		if s.holder == prev && prev.live(time.Now()) && me.fence > s.stats.MaxFence {
			s.stats.Busy++
			return errBusy
		}
	}
	if me.fence <= s.stats.MaxFence {
		s.stats.Fenced++
		return fmt.Errorf("%w: %d is not above %d", errStaleFence, me.fence, s.stats.MaxFence)
	}
	s.stats.MaxFence = me.fence
	prev := s.holder
	s.holder = me
	if !me.leaseEnd.IsZero() {
		// The lease runs from when the request came, waiting included.
		me.timer = time.AfterFunc(time.Until(me.leaseEnd), func() { s.expire(me) })
	}
	if prev != nil {
		s.supersede(prev, me)
		s.mu.Unlock()
		<-prev.done
		s.mu.Lock()
	}
	if me.ctx.Err() != nil {
		s.finishLocked(me)
		return context.Cause(me.ctx)
	}
	me.executing = true
	s.executing++
	s.peakExecuting = max(s.peakExecuting, s.executing)
	return nil
}

// supersede cancels the holder prev for the newcomer me, and counts what
// that was: an overlap if prev is another eval whose lease is live (the
// executor was double-booked), a takeover if it is the same eval, nothing if
// prev had already lost the executor (its lease passed, its caller left).
func (s *Server) supersede(prev, me *running) {
	switch now := time.Now(); {
	case prev.ctx.Err() != nil:
	case !prev.leaseEnd.IsZero() && !now.Before(prev.leaseEnd):
		// Passed, and its timer about to say so.
		s.stats.LeaseExpired++
		prev.cancel(errLeaseExpired)
	case prev.evalID == me.evalID:
		s.stats.Preempted++
	default:
		s.stats.Overlaps++
		s.stats.Preempted++
	}
	prev.cancel(errPreempted) // no-op if already cancelled: the first cause stays
}

// expire stops an eval whose lease has passed, unless an extension moved it.
func (s *Server) expire(me *running) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if me.finished || me.ctx.Err() != nil {
		return
	}
	if d := time.Until(me.leaseEnd); d > 0 {
		me.timer.Reset(d)
		return
	}
	s.stats.LeaseExpired++
	me.cancel(errLeaseExpired)
}

func (s *Server) handleLease(w http.ResponseWriter, r *http.Request) {
	received, wallMs := time.Now(), s.now().UnixMilli()
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var ext executor.Extension
	if err := json.Unmarshal(body, &ext); err != nil {
		s.httpError(w, http.StatusBadRequest, "want {\"eval_id\", \"fence\", \"lease_ms\"}: %v", err)
		return
	}
	if ext.EvalID == "" || ext.LeaseMs <= 0 || ext.LeaseMs > maxLease.Milliseconds() {
		s.httpError(w, http.StatusBadRequest, "want a non-empty eval_id and lease_ms in [1, %d]", maxLease.Milliseconds())
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.holder
	switch {
	case ext.Fence < s.stats.MaxFence:
		s.refuseStaleLocked(w, "eval %s fence %d: a newer lease (fence %d) holds the executor", ext.EvalID, ext.Fence, s.stats.MaxFence)
	case h == nil || h.fence != ext.Fence || h.evalID != ext.EvalID:
		s.httpError(w, http.StatusNotFound, "eval %s fence %d is not running", ext.EvalID, ext.Fence)
	case h.ctx.Err() != nil:
		s.refuse(w, stoppingReason(context.Cause(h.ctx)), "eval %s fence %d is stopping: %v", ext.EvalID, ext.Fence, context.Cause(h.ctx))
	case !leaseEnd(received, wallMs, ext.LeaseMs, ext.SentAtMs).After(received):
		s.refuse(w, executor.ReasonLeaseOverOnArrival, "eval %s fence %d: %v", ext.EvalID, ext.Fence, errLeaseOver)
	default:
		// An extension only extends: one delayed behind a newer one must
		// not cut the lease short.
		if end := leaseEnd(received, wallMs, ext.LeaseMs, ext.SentAtMs); end.After(h.leaseEnd) {
			h.leaseEnd = end
		}
		if h.timer == nil {
			h.timer = time.AfterFunc(time.Until(h.leaseEnd), func() { s.expire(h) })
		} else {
			h.timer.Reset(time.Until(h.leaseEnd))
		}
		s.stats.Extensions++
		s.writeJSON(w, http.StatusOK, map[string]int64{"lease_ms": ext.LeaseMs})
	}
}

// stoppingReason is the reason an extension of a stopping eval is refused
// with: the cause that stopped it.
func stoppingReason(cause error) executor.Reason {
	switch {
	case errors.Is(cause, errLeaseExpired):
		return executor.ReasonLeaseExpired
	case errors.Is(cause, errPreempted):
		return executor.ReasonPreempted
	}
	return executor.ReasonStopping
}

func (s *Server) finish(me *running) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finishLocked(me)
}

func (s *Server) finishLocked(me *running) {
	me.finished = true
	me.completed = me.ctx.Err() == nil
	if me.timer != nil {
		me.timer.Stop()
	}
	if me.executing {
		me.executing = false
		s.executing--
	}
	if s.holder == me {
		s.holder = nil
	}
	close(me.done)
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.stats)
}

func (s *Server) execute(ctx context.Context, req executor.Request) (executor.Result, error) {
	if s.opts.Exec != "" {
		return s.runCommand(ctx, req)
	}
	latency := s.opts.Latency
	var sim struct {
		SleepMs *int64 `json:"sleep_ms"`
		// Grade forces the simulated grade: "passed" or "failed".
		Grade string `json:"grade"`
		// Metrics are answered as the grade's metrics.
		Metrics map[string]float64 `json:"metrics"`
	}
	if json.Unmarshal(req.Spec, &sim) == nil && sim.SleepMs != nil && *sim.SleepMs >= 0 {
		latency = time.Duration(*sim.SleepMs) * time.Millisecond
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		defer t.Stop()
		select {
		case <-ctx.Done():
			time.Sleep(s.opts.stopDelay)
			return executor.Result{}, context.Cause(ctx)
		case <-t.C:
		}
	}
	if s.opts.FailRate > 0 && mrand.Float64() < s.opts.FailRate {
		return executor.Result{}, errors.New("simulated failure")
	}
	score, status := 1.0, executor.StatusPassed
	if sim.Grade == executor.StatusFailed || sim.Grade == "" && s.opts.GradeFailRate > 0 && mrand.Float64() < s.opts.GradeFailRate {
		score, status = 0, executor.StatusFailed
	}
	return executor.Result{Status: status, Score: &score, Metrics: sim.Metrics}, nil
}
