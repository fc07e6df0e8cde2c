// Package api is evalpool's JSON API under /api/v1, which the dashboard
// mounts: it exists so that programs (CI jobs, notebooks, other services)
// can submit and follow runs and evals over HTTP without a Go build or the
// CLI, with the same checks and semantics as the CLI — both are adapters
// over evalpool.Client.
//
// Choices:
//
//   - Bodies are one JSON object, read strictly: bytes that are not UTF-8,
//     unknown fields, trailing data and bad values are 400; a body over
//     Options.MaxBodyBytes is 413.
//     Errors are {"error": "one line"}: unknown run or eval 404, wrong
//     method 405 (with Allow), a run name in use 409, an eval no registered
//     executor could serve 422, and so is a pool with no executor at all
//     (unless allow_empty_pool), anything from Redis (or unexpected) 503.
//   - Eval IDs of runs are NAME/KEY: in a path, escape the slash (%2F).
//   - POST /api/v1/evals is idempotent by eval ID (its Asynq task ID): the
//     same ID again answers 200 with the eval as it is, and enqueues
//     nothing; the second body is not compared with the first.
//   - A submission or cancel, once its body is read, finishes even if the
//     client goes away, so that a run is never left half enqueued.
//   - Evals are submitted to and looked up in Options.Pool (GET
//     /evals/{id}?pool=NAME reads one of another pool); a run is
//     cancelled and retried in the pool it was submitted to.
//   - Results are NDJSON, one line per eval in the run's order. With
//     ?follow=1 the stream is the run's ends, each eval once: those so far,
//     in the order they ended, then each as it ends; it ends when every
//     eval has, or with a last {"error"} line when the run can no longer be
//     read. A followed run is polled once per process for all its
//     followers (see follows), at O(what ended) a poll.
//   - What a request may cost is bounded: runs are listed up to ?limit
//     (at most MaxListLimit); a run of more than Options.MaxRunEvals evals
//     is refused (413); followers are capped per run (429) and in all
//     (503). A run's summary and its results without follow read the run
//     once per request; a page of its ended evals reads at most
//     run.EvalsScan records, whatever its size; a comparison of two runs
//     reads each once, and lists at most ?limit (MaxCompareLimit) evals and
//     groups of each kind.
//
// The API has no authentication of its own: the dashboard puts it behind
// its own (a bearer token, or a login cookie with a same-origin check on
// anything but GET and HEAD; see the dashboard package).
package api

import (
	"bytes"
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// Prefix is where the API lives; the dashboard mounts the handler at
// Prefix + "/".
const Prefix = "/api/v1"

// DefaultMaxBodyBytes is Options.MaxBodyBytes's default: a run of many
// evals is one body.
const DefaultMaxBodyBytes = 32 << 20

// DefaultFollowInterval is Options.FollowInterval's default.
const DefaultFollowInterval = 250 * time.Millisecond

// Defaults of the API's caps (Options).
const (
	// DefaultMaxRunEvals is Options.MaxRunEvals's default.
	DefaultMaxRunEvals = 50_000
	// DefaultMaxFollowersPerRun is Options.MaxFollowersPerRun's default.
	DefaultMaxFollowersPerRun = 100
	// DefaultMaxFollowers is Options.MaxFollowers's default.
	DefaultMaxFollowers = 1000
)

// followPage is how many records a follower's replay, and a hub's poller,
// read at once.
const followPage = 1000

// Limits of the values a request may give.
const (
	// MaxTimeoutS bounds timeout_s: a week.
	MaxTimeoutS = 7 * 24 * 3600
	// MaxRetentionS bounds a run's retention_s: a year.
	MaxRetentionS = 365 * 24 * 3600
	// MaxRetry bounds max_retry.
	MaxRetry = 100
	// DefaultListLimit and MaxListLimit are GET /runs's ?limit.
	DefaultListLimit = 50
	MaxListLimit     = 1000
)

// Options configure the API.
type Options struct {
	// Client submits, reads and cancels evals and runs. Required.
	Client *evalpool.Client
	// Pool names the pool evals and runs are submitted to, and evals
	// looked up and cancelled in. Defaults to pool.DefaultName.
	Pool string
	// Logger receives the errors answered with a 5xx. Defaults to
	// discarding.
	Logger *zerolog.Logger
	// MaxBodyBytes bounds a request's body; a larger one is refused with a
	// 413. Defaults to DefaultMaxBodyBytes (32 MiB).
	MaxBodyBytes int64
	// FollowInterval is how often a followed run's progress is polled
	// (results?follow=1), once for all its followers. Defaults to
	// DefaultFollowInterval (250 ms).
	FollowInterval time.Duration
	// MaxRunEvals bounds the evals of one POST /runs; more is refused with
	// a 413 before any is kept. Defaults to DefaultMaxRunEvals (50,000).
	MaxRunEvals int
	// MaxFollowersPerRun bounds the followers of one run at once; one more
	// is refused with a 429. Defaults to DefaultMaxFollowersPerRun (100).
	MaxFollowersPerRun int
	// MaxFollowers bounds the followers of all runs at once; one more is
	// refused with a 503. Defaults to DefaultMaxFollowers (1,000).
	MaxFollowers int
}

func (o *Options) validate() error {
	switch {
	case o.Client == nil:
		return errors.New("api: Options.Client is required")
	case o.MaxBodyBytes < 0:
		return fmt.Errorf("api: Options.MaxBodyBytes may not be negative, got %d", o.MaxBodyBytes)
	case o.FollowInterval < 0:
		return fmt.Errorf("api: Options.FollowInterval may not be negative, got %s", o.FollowInterval)
	case o.MaxRunEvals < 0:
		return fmt.Errorf("api: Options.MaxRunEvals may not be negative, got %d", o.MaxRunEvals)
	case o.MaxFollowersPerRun < 0:
		return fmt.Errorf("api: Options.MaxFollowersPerRun may not be negative, got %d", o.MaxFollowersPerRun)
	case o.MaxFollowers < 0:
		return fmt.Errorf("api: Options.MaxFollowers may not be negative, got %d", o.MaxFollowers)
	}
	return nil
}

// Handler serves the API. It is safe for concurrent use.
type Handler struct {
	opts    Options
	log     zerolog.Logger
	c       *evalpool.Client
	runs    *run.Store
	follows *follows
	mux     *http.ServeMux
}

// New returns the API's handler. It does not touch Redis, and holds nothing
// to close.
func New(opts Options) (*Handler, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	opts.Pool = cmp.Or(opts.Pool, pool.DefaultName)
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.FollowInterval == 0 {
		opts.FollowInterval = DefaultFollowInterval
	}
	opts.MaxRunEvals = cmp.Or(opts.MaxRunEvals, DefaultMaxRunEvals)
	opts.MaxFollowersPerRun = cmp.Or(opts.MaxFollowersPerRun, DefaultMaxFollowersPerRun)
	opts.MaxFollowers = cmp.Or(opts.MaxFollowers, DefaultMaxFollowers)
	h := &Handler{
		opts: opts,
		log:  zerolog.Nop(),
		c:    opts.Client,
		runs: opts.Client.Runs(),
		mux:  http.NewServeMux(),
	}
	if opts.Logger != nil {
		h.log = *opts.Logger
	}
	h.follows = &follows{runs: h.runs, interval: opts.FollowInterval, page: followPage,
		perRun: opts.MaxFollowersPerRun, total: opts.MaxFollowers, hubs: map[string]*hub{}}
	methods := map[string][]string{}
	var paths []string
	for _, rt := range h.routes() {
		h.mux.HandleFunc(rt.method+" "+rt.path, rt.handler)
		if methods[rt.path] == nil {
			paths = append(paths, rt.path)
		}
		methods[rt.path] = append(methods[rt.path], rt.method)
	}
	// A known path with another method: 405, in JSON, saying what is allowed.
	for _, path := range paths {
		allow := methods[path]
		if slices.Contains(allow, http.MethodGet) {
			allow = append(allow, http.MethodHead)
		}
		h.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s: use %s", r.Method, path, strings.Join(allow, ", ")))
		})
	}
	h.mux.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s (see %s/openapi.json)", r.URL.Path, Prefix))
	})
	return h, nil
}

// route is one endpoint: the mux serves exactly these, and openapi.json
// describes exactly these (TestOpenAPICoversRoutes).
type route struct {
	method, path string
	handler      http.HandlerFunc
}

func (h *Handler) routes() []route {
	return []route{
		{http.MethodPost, Prefix + "/runs", h.submitRun},
		{http.MethodGet, Prefix + "/runs", h.listRuns},
		{http.MethodGet, Prefix + "/runs/{name}", h.getRun},
		{http.MethodGet, Prefix + "/runs/{name}/progress", h.runProgress},
		{http.MethodGet, Prefix + "/runs/{name}/compare", h.compareRuns},
		{http.MethodGet, Prefix + "/runs/{name}/results", h.runResults},
		{http.MethodGet, Prefix + "/runs/{name}/evals", h.runEvals},
		{http.MethodPost, Prefix + "/runs/{name}/cancel", h.cancelRun},
		{http.MethodPost, Prefix + "/runs/{name}/retry", h.retryRun},
		{http.MethodPost, Prefix + "/evals", h.submitEval},
		{http.MethodGet, Prefix + "/evals/{id}", h.getEval},
		{http.MethodPost, Prefix + "/evals/{id}/cancel", h.cancelEval},
		{http.MethodGet, Prefix + "/openapi.json", h.openAPI},
	}
}

// ServeHTTP implements http.Handler. A panic in a handler is logged and
// answered with a 500, never passed on to net/http.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler { //nolint:errorlint // a sentinel panic value, not an error chain
				panic(v)
			}
			h.log.Error().Str("method", r.Method).Str("path", r.URL.Path).Interface("panic", v).Msg("api: handler panicked")
			writeError(w, http.StatusInternalServerError, "internal error")
		}
	}()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	h.mux.ServeHTTP(w, r)
}

//go:embed openapi.json
var openAPIDoc []byte

func (h *Handler) openAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPIDoc)
}

// errorBody is every error's body.
type errorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	// Encoded before the status is sent: a value that cannot be is a 500
	// that says so, not a 200 with no body.
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: oneLine("the answer could not be encoded as JSON: " + err.Error())})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeError answers {"error": msg}, msg on one line.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Error: oneLine(msg)})
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// statusOf is the HTTP status of an error of the packages the API calls.
// Anything it does not know is Redis's (or unexpected): 503, retry.
func statusOf(err error) int {
	switch {
	case errors.Is(err, run.ErrNotFound), errors.Is(err, client.ErrEvalNotFound):
		return http.StatusNotFound
	case errors.Is(err, run.ErrExists), errors.Is(err, run.ErrRetrying):
		return http.StatusConflict
	case errors.Is(err, pool.ErrUnservable), errors.Is(err, pool.ErrEmpty):
		return http.StatusUnprocessableEntity
	case errors.Is(err, run.ErrInvalid), errors.Is(err, tasks.ErrBadPayload), errors.Is(err, pool.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrTooManyEvals):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrTooManyFollowersOfRun):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrTooManyFollowers):
		return http.StatusServiceUnavailable
	}
	return http.StatusServiceUnavailable
}

// fail answers err with its status; a 5xx is logged.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	if errors.Is(err, pool.ErrEmpty) {
		err = fmt.Errorf("%w (the dashboard's --pool, or its Redis, may be the wrong one): nothing was enqueued; set \"allow_empty_pool\": true to submit anyway", err)
	}
	// A follow past the cap is the cap working, not a failure to log.
	if status >= 500 && !errors.Is(err, ErrTooManyFollowers) {
		if r.Context().Err() != nil {
			return // the client went away: nobody reads the answer
		}
		h.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("api: request failed")
	}
	writeError(w, status, err.Error())
}

// errTooLarge is a body over MaxBodyBytes.
var errTooLarge = errors.New("request body too large")

// decode reads the request's body, one JSON object, strictly, into v. It
// answers the error itself and returns false on failure. With optional, an
// empty body leaves v as it is.
func (h *Handler) decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	limit := h.opts.MaxBodyBytes
	if r.ContentLength > limit {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("%s: %d bytes, more than %d", errTooLarge, r.ContentLength, limit))
		return false
	}
	// Read whole, which the decoder would buffer anyway, to check the
	// bytes before encoding/json turns those not UTF-8 into U+FFFD, or
	// passes them on in a spec.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err == nil {
		err = tasks.CheckUTF8(body)
	}
	if err == nil {
		err = dec.Decode(v)
	}
	if err == nil {
		// One object, and nothing after it but space.
		if extra := dec.Decode(&json.RawMessage{}); !errors.Is(extra, io.EOF) {
			err = extra
			if err == nil {
				err = errors.New("data after the JSON object")
			}
		}
	}
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("%s: more than %d bytes", errTooLarge, limit))
	case errors.Is(err, io.EOF) && optional:
		return true
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "the request body is empty: want a JSON object")
	default:
		writeError(w, http.StatusBadRequest, "malformed request body: "+err.Error())
	}
	return false
}

// detach is the context of a write that must finish once started: the
// request's values, without its cancelation.
func detach(r *http.Request) context.Context { return context.WithoutCancel(r.Context()) }

// missingSpec reports whether a spec was not given (absent, or null).
func missingSpec(spec json.RawMessage) bool {
	s := strings.TrimSpace(string(spec))
	return s == "" || s == "null"
}

// retryOptions turns max_retry (nil: the default) into Asynq's retries.
// max_retry 0 is none, which EvalOptions spells negative.
func retryOptions(maxRetry *int) (tasks.EvalOptions, error) {
	switch {
	case maxRetry == nil:
		return tasks.EvalOptions{}, nil
	case *maxRetry < 0 || *maxRetry > MaxRetry:
		return tasks.EvalOptions{}, fmt.Errorf("%w: max_retry %d: want 0 to %d", tasks.ErrBadPayload, *maxRetry, MaxRetry)
	case *maxRetry == 0:
		return tasks.EvalOptions{MaxRetry: -1}, nil
	}
	return tasks.EvalOptions{MaxRetry: *maxRetry}, nil
}

// timeoutOf turns timeout_s (nil: the default) into a duration.
func timeoutOf(timeoutS *int64) (time.Duration, error) {
	if timeoutS == nil {
		return tasks.DefaultTimeout, nil
	}
	if *timeoutS < 1 || *timeoutS > MaxTimeoutS {
		return 0, fmt.Errorf("%w: timeout_s %d: want 1 to %d", tasks.ErrBadPayload, *timeoutS, MaxTimeoutS)
	}
	return time.Duration(*timeoutS) * time.Second, nil
}

// Cancelled is what a cancel did (client.Cancelled).
type Cancelled struct {
	Pending int `json:"pending"`
	Running int `json:"running"`
	Ended   int `json:"ended"`
	Unknown int `json:"unknown"`
}

func cancelledOf(c client.Cancelled) Cancelled {
	return Cancelled{Pending: c.Pending, Running: c.Running, Ended: c.Ended, Unknown: c.Unknown}
}
