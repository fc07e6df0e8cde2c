package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// ServerOptions configure the reference executor. The zero value simulates
// an executor that passes every eval at once.
type ServerOptions struct {
	// Exec, when set, is a shell command run per eval (sh -c): the spec on
	// its stdin, a JSON result on its stdout. It runs in a process group of
	// its own, killed whole at the caller's deadline.
	Exec string
	// Latency is how long a simulated eval takes. Ignored with Exec.
	Latency time.Duration
	// FailRate is the share of simulated evals that fail with a 500, in
	// [0, 1]. Ignored with Exec.
	FailRate float64
	// Logger receives a line per eval. Defaults to discarding.
	Logger *zerolog.Logger
}

func (o *ServerOptions) validate() error {
	if o.Latency < 0 {
		return fmt.Errorf("executor: latency may not be negative, got %s", o.Latency)
	}
	if o.FailRate < 0 || o.FailRate > 1 {
		return fmt.Errorf("executor: fail rate must be in [0, 1], got %g", o.FailRate)
	}
	return nil
}

// Stats are the reference executor's counters, served at GET /v1/stats.
type Stats struct {
	// Served counts evals run to an answer (passed, failed or error).
	Served  int64 `json:"served"`
	Passed  int64 `json:"passed"`
	Failed  int64 `json:"failed"`
	Errors  int64 `json:"errors"`
	Timeout int64 `json:"timeouts"`
	// Fenced counts requests refused for a fence not above the highest seen.
	Fenced int64 `json:"fenced"`
	// Preempted counts running evals cancelled by a request with a higher
	// fence.
	Preempted int64 `json:"preempted"`
	// Overlaps counts evals that arrived while another was running: the
	// witness of double booking. It must stay 0.
	Overlaps int64 `json:"overlaps"`
	MaxFence int64 `json:"max_fence"`
	Running  bool  `json:"running"`
}

var errPreempted = errors.New("preempted by a higher fence")

type running struct {
	fence  int64
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// Server is the reference executor: it runs one eval at a time, refuses
// stale fences, and counts overlaps.
type Server struct {
	opts ServerOptions
	log  zerolog.Logger
	mux  *http.ServeMux

	mu      sync.Mutex
	stats   Stats
	current *running
}

// NewServer returns the reference executor as an http.Handler.
func NewServer(opts ServerOptions) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: zerolog.Nop(), mux: http.NewServeMux()}
	if opts.Logger != nil {
		s.log = *opts.Logger
	}
	s.mux.HandleFunc("POST "+PathEvals, s.handleEval)
	s.mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	s.mux.HandleFunc("GET "+PathStats, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Stats())
	})
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Running = s.current != nil
	return st
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}

func (s *Server) handleEval(w http.ResponseWriter, r *http.Request) {
	var req Request
	dec := json.NewDecoder(io.LimitReader(r.Body, 2*MaxAnswerBytes))
	if err := dec.Decode(&req); err != nil || req.EvalID == "" || len(req.Spec) == 0 {
		httpError(w, http.StatusBadRequest, "want {\"eval_id\", \"fence\", \"spec\"}: %v", err)
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	if d, ok := deadlineFrom(r); ok {
		var stop context.CancelFunc
		ctx, stop = context.WithDeadline(ctx, d)
		defer stop()
	}
	me, err := s.admit(req.Fence, cancel)
	if err != nil {
		httpError(w, http.StatusConflict, "eval %s fence %d: %v", req.EvalID, req.Fence, err)
		return
	}
	start := time.Now()
	res, err := s.execute(ctx, req)
	s.finish(me)

	log := s.log.Info().Str("eval", req.EvalID).Int64("fence", req.Fence).Dur("took", time.Since(start))
	switch {
	case errors.Is(context.Cause(ctx), errPreempted):
		log.Str("outcome", "preempted").Msg("eval")
		httpError(w, http.StatusConflict, "eval %s fence %d: %v", req.EvalID, req.Fence, errPreempted)
		return
	case ctx.Err() != nil && r.Context().Err() == nil:
		s.count(func(st *Stats) { st.Served++; st.Timeout++ })
		log.Str("outcome", "timeout").Msg("eval")
		httpError(w, http.StatusGatewayTimeout, "eval %s: deadline passed after %s; its command was killed", req.EvalID, time.Since(start).Round(time.Millisecond))
		return
	case err != nil:
		s.count(func(st *Stats) { st.Served++; st.Errors++ })
		log.Str("outcome", "error").Err(err).Msg("eval")
		httpError(w, http.StatusInternalServerError, "eval %s: %v", req.EvalID, err)
		return
	}
	s.count(func(st *Stats) {
		st.Served++
		if res.Status == StatusPassed {
			st.Passed++
		} else {
			st.Failed++
		}
	})
	log.Str("outcome", res.Status).Msg("eval")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// admit lets an eval run if its fence is the highest seen, after cancelling
// and waiting out an older one that still runs.
func (s *Server) admit(fence int64, cancel context.CancelCauseFunc) (*running, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fence <= s.stats.MaxFence {
		s.stats.Fenced++
		return nil, fmt.Errorf("stale fence: %d is not above %d", fence, s.stats.MaxFence)
	}
	s.stats.MaxFence = fence
	if s.current != nil {
		s.stats.Overlaps++
	}
	for s.current != nil {
		old := s.current
		s.stats.Preempted++
		old.cancel(errPreempted)
		s.mu.Unlock()
		<-old.done
		s.mu.Lock()
		if s.stats.MaxFence != fence {
			return nil, errPreempted
		}
	}
	me := &running{fence: fence, cancel: cancel, done: make(chan struct{})}
	s.current = me
	return me, nil
}

func (s *Server) finish(me *running) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == me {
		s.current = nil
	}
	close(me.done)
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.stats)
}

func (s *Server) execute(ctx context.Context, req Request) (Result, error) {
	if s.opts.Exec != "" {
		return s.runCommand(ctx, req)
	}
	if s.opts.Latency > 0 {
		t := time.NewTimer(s.opts.Latency)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return Result{}, context.Cause(ctx)
		case <-t.C:
		}
	}
	if s.opts.FailRate > 0 && rand.Float64() < s.opts.FailRate {
		return Result{}, errors.New("simulated failure")
	}
	score := 1.0
	return Result{Status: StatusPassed, Score: &score}, nil
}

// runCommand runs the --exec command with the spec on stdin. At the
// deadline (or a preemption) the whole process group is killed, so a command
// that forked children leaves nothing running.
func (s *Server) runCommand(ctx context.Context, req Request) (Result, error) {
	cmd := exec.CommandContext(ctx, "sh", "-c", s.opts.Exec)
	cmd.Stdin = strings.NewReader(string(req.Spec))
	cmd.Env = append(cmd.Environ(), fmt.Sprintf("EVALPOOL_EVAL_ID=%s", req.EvalID), fmt.Sprintf("EVALPOOL_FENCE=%d", req.Fence))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &limitedWriter{w: &stdout, n: MaxAnswerBytes}, &limitedWriter{w: &stderr, n: 4096}
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return Result{}, context.Cause(ctx)
		}
		return Result{}, fmt.Errorf("command %q: %w: %s", s.opts.Exec, err, snippet([]byte(stderr.String())))
	}
	return ParseResult([]byte(stdout.String()))
}

// limitedWriter keeps the first n bytes and drops the rest, so a chatty
// command cannot exhaust memory.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		_, _ = l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
