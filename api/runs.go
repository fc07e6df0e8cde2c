package api

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// RunRequest is the body of POST /runs. Name defaults to
// run-YYYYMMDD-HHMMSS-XXXXXX (UTC, and 6 random hex digits).
type RunRequest struct {
	Name     string            `json:"name,omitempty"`
	Require  map[string]string `json:"require,omitempty"`
	TimeoutS *int64            `json:"timeout_s,omitempty"`
	MaxRetry *int              `json:"max_retry,omitempty"`
	// RetentionS is how long the run, its evals' ends and results, is kept
	// after its last eval ended, in seconds. Defaults to the store's (7
	// days).
	RetentionS *int64    `json:"retention_s,omitempty"`
	Evals      []RunEval `json:"evals"`
	// Resume finishes the submission of the run Name that was cut short
	// (its submission "incomplete"): the same evals, in the same order.
	Resume bool `json:"resume,omitempty"`
	// AllowEmptyPool submits to a pool with no executor registered yet,
	// which is otherwise refused (422).
	AllowEmptyPool bool `json:"allow_empty_pool,omitempty"`
	// Meta and Epochs are client.RunRequest's.
	Meta   map[string]string `json:"meta,omitempty"`
	Epochs int               `json:"epochs,omitempty"`
	// Weight, MaxExecutors and Priority are the run's share of the pool
	// (client.RunRequest's): 1, no cap and normal when absent; a value
	// given is checked as given (a weight of 0 is refused).
	Weight       *int    `json:"weight,omitempty"`
	MaxExecutors *int    `json:"max_executors,omitempty"`
	Priority     *string `json:"priority,omitempty"`
}

// RunEval is one eval of a RunRequest: EvalID is its key in the run (its
// position, from 1, when empty).
type RunEval struct {
	EvalID  string            `json:"eval_id,omitempty"`
	Spec    json.RawMessage   `json:"spec"`
	Require map[string]string `json:"require,omitempty"`
	Group   string            `json:"group,omitempty"`
}

// RunCreated is the answer of POST /runs.
type RunCreated struct {
	Name string `json:"name"`
	Size int    `json:"size"`
	Pool string `json:"pool"`
}

// ErrTooManyEvals is a POST /runs of more than Options.MaxRunEvals evals:
// 413.
var ErrTooManyEvals = errors.New("too many evals in one request")

// runBody is a RunRequest as read: its evals are decoded one at a time
// (decodeEvals), so that a request over Options.MaxRunEvals is refused
// having decoded no more than the cap. Its Evals hides RunRequest's.
type runBody struct {
	RunRequest
	Evals json.RawMessage `json:"evals"`
}

// decodeEvals decodes the evals array raw, strictly, refusing more than
// max of them. Absent (or null) is none.
func decodeEvals(raw json.RawMessage, max int) ([]RunEval, error) {
	if missingSpec(raw) {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, fmt.Errorf("%w: \"evals\": want an array of evals", tasks.ErrBadPayload)
	}
	var evals []RunEval
	for dec.More() {
		if len(evals) == max {
			return nil, fmt.Errorf("%w: more than %d; submit the suite as several runs, or with `evalpool run submit`", ErrTooManyEvals, max)
		}
		var e RunEval
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("%w: malformed eval %d: %w", tasks.ErrBadPayload, len(evals)+1, err)
		}
		evals = append(evals, e)
	}
	return evals, nil
}

func (h *Handler) submitRun(w http.ResponseWriter, r *http.Request) {
	var body runBody
	if !h.decode(w, r, &body, false) {
		return
	}
	req := body.RunRequest
	evals, err := decodeEvals(body.Evals, h.opts.MaxRunEvals)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	req.Evals = evals
	rr, err := runRequestOf(req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	created, err := h.c.SubmitRun(detach(r), h.opts.Pool, rr)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", Prefix+"/runs/"+url.PathEscape(created.Name))
	writeJSON(w, http.StatusCreated, RunCreated{Name: created.Name, Size: created.Size, Pool: created.Pool})
}

// runRequestOf checks what client.Submit does not: that evals were given, each
// with a spec, and the bounds of timeout_s, max_retry and retention_s.
func runRequestOf(req RunRequest) (client.RunRequest, error) {
	if len(req.Evals) == 0 {
		return client.RunRequest{}, fmt.Errorf("%w: \"evals\" is missing or empty", tasks.ErrBadPayload)
	}
	timeout, err := timeoutOf(req.TimeoutS)
	if err != nil {
		return client.RunRequest{}, err
	}
	opts, err := retryOptions(req.MaxRetry)
	if err != nil {
		return client.RunRequest{}, err
	}
	var retention time.Duration
	if req.RetentionS != nil {
		if *req.RetentionS < 1 || *req.RetentionS > MaxRetentionS {
			return client.RunRequest{}, fmt.Errorf("%w: retention_s %d: want 1 to %d", tasks.ErrBadPayload, *req.RetentionS, MaxRetentionS)
		}
		retention = time.Duration(*req.RetentionS) * time.Second
	}
	evals := make([]tasks.Eval, len(req.Evals))
	for i, e := range req.Evals {
		if missingSpec(e.Spec) {
			return client.RunRequest{}, fmt.Errorf("%w: eval %d: \"spec\" is missing", tasks.ErrBadPayload, i+1)
		}
		evals[i] = tasks.Eval{ID: e.EvalID, Spec: e.Spec, Require: e.Require, Group: e.Group}
	}
	// A value given is checked as given; the rest of the bounds are
	// run.Run.CheckShare's.
	if req.Weight != nil && *req.Weight < 1 {
		return client.RunRequest{}, fmt.Errorf("%w: weight %d: want 1 to %d", run.ErrInvalid, *req.Weight, run.MaxWeight)
	}
	if req.Priority != nil && *req.Priority == "" {
		return client.RunRequest{}, fmt.Errorf("%w: priority \"\": want %s or %s", run.ErrInvalid, run.PriorityNormal, run.PriorityHigh)
	}
	name := req.Name
	if name == "" {
		// The CLI's default name, made unique: two runs submitted in one
		// second must not collide.
		suffix := make([]byte, 3)
		_, _ = rand.Read(suffix)
		name = "run-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(suffix)
	}
	return client.RunRequest{Name: name, Evals: evals, Require: req.Require, Timeout: timeout, Options: opts, Retention: retention, Resume: req.Resume, AllowEmptyPool: req.AllowEmptyPool,
		Meta: req.Meta, Epochs: req.Epochs, Weight: deref(req.Weight), MaxExecutors: deref(req.MaxExecutors), Priority: deref(req.Priority)}, nil
}

// RunItem is a run in GET /runs: as submitted, with its progress.
type RunItem struct {
	run.Run
	Progress run.Counts `json:"progress"`
	// PassRate is passed over passed, failed and errored; -1 before any
	// ended.
	PassRate float64 `json:"pass_rate"`
	// MeanScore is the mean score of its ended evals that have one, as
	// its summary's, and MeanMetrics each metric's mean over its graded
	// evals, eval by eval, read in O(1) (run.Store.ProgressMeans); absent
	// before any.
	MeanScore   *float64           `json:"mean_score,omitempty"`
	MeanMetrics map[string]float64 `json:"mean_metrics,omitempty"`
	// Suite is what it is a run of (run.Run.Suite): its meta's "suite",
	// else its name less a date and time it ends with.
	Suite string `json:"suite"`
	// Trend is the pass rates of the last MaxTrend (or fewer) runs of its
	// suite still kept, listed or not, oldest first, ending with its own
	// (run.Store.Trends).
	Trend []TrendPoint `json:"trend"`
}

// MaxTrend bounds a RunItem's Trend.
const MaxTrend = 20

// TrendPoint is a run in a RunItem's Trend.
type TrendPoint = run.TrendPoint

// RunList is the answer of GET /runs.
type RunList struct {
	Runs []RunItem `json:"runs"`
}

func (h *Handler) listRuns(w http.ResponseWriter, r *http.Request) {
	limit, ok := limitParam(w, r.URL.Query(), DefaultListLimit, MaxListLimit)
	if !ok {
		return
	}
	runs, err := h.runs.List(r.Context(), limit)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	trends, err := h.runs.Trends(r.Context(), runs, MaxTrend)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	list := RunList{Runs: []RunItem{}}
	for _, rn := range runs {
		c, means, err := h.runs.ProgressMeans(r.Context(), rn.Name)
		if errors.Is(err, run.ErrNotFound) {
			continue // its keys expired since
		}
		if err != nil {
			h.fail(w, r, err)
			return
		}
		list.Runs = append(list.Runs, RunItem{Run: rn, Progress: c, PassRate: passRate(c), MeanScore: means.Score, MeanMetrics: means.Metrics, Suite: rn.Suite(),
			Trend: trends[rn.Name]})
	}
	writeJSON(w, http.StatusOK, list)
}

// limitParam is the query's ?limit, def when absent; one out of 1..max is
// answered 400, and ok is false.
func limitParam(w http.ResponseWriter, q url.Values, def, max int) (limit int, ok bool) {
	s := q.Get("limit")
	if s == "" {
		return def, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: want 1 to %d", s, max))
		return 0, false
	}
	return n, true
}

func passRate(c run.Counts) float64 {
	if n := c.Passed + c.Failed + c.Errored; n > 0 {
		return float64(c.Passed) / float64(n)
	}
	return -1
}

// runName is the {name} of the path, or a 404 for a name no run can have.
func runName(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	if err := run.ValidateName(name); err != nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("%s: %s", run.ErrNotFound, err))
		return "", false
	}
	return name, true
}

func (h *Handler) getRun(w http.ResponseWriter, r *http.Request) {
	name, ok := runName(w, r)
	if !ok {
		return
	}
	against := r.URL.Query().Get("compare")
	if against != "" {
		if err := run.ValidateName(against); err != nil {
			writeError(w, http.StatusNotFound, fmt.Sprintf("compare with %s: %s", against, run.ErrNotFound))
			return
		}
	}
	sum, err := h.runs.Summarize(r.Context(), name, against)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

// Bounds of GET /runs/{name}/compare.
const (
	// DefaultCompareLimit and MaxCompareLimit are its ?limit: how many
	// newly failing evals, newly passing evals and groups it lists, each.
	DefaultCompareLimit = 100
	MaxCompareLimit     = 1000
)

// RunComparison is the answer of GET /runs/{name}/compare?against=BASE: the
// run (Head) against the run BASE, eval key by eval key (run.Comparison),
// with both runs' counts, and each list capped at ?limit with its count.
type RunComparison struct {
	Base ComparedRun `json:"base"`
	Head ComparedRun `json:"head"`
	// PassRate is nil while either run has none; Metrics are the metrics
	// both runs have, their means.
	PassRate *run.Delta           `json:"pass_rate,omitempty"`
	Metrics  map[string]run.Delta `json:"metrics,omitempty"`
	// Groups are the groups both runs have a pass rate of (the
	// run.MaxSummaryGroups that changed most), the largest regression
	// first (then by name); GroupCount counts them all.
	Groups     []run.GroupDelta `json:"groups"`
	GroupCount int              `json:"group_count"`
	// NewlyFailing are the evals that passed in Base and failed or errored
	// in Head; NewlyPassing the other way round. Keys only in one run are
	// in neither.
	NewlyFailing ChangedEvals `json:"newly_failing"`
	NewlyPassing ChangedEvals `json:"newly_passing"`
}

// ComparedRun is one run of a RunComparison.
type ComparedRun struct {
	Name string `json:"name"`
	run.Counts
	// PassRate is passed over passed, failed and errored; -1 before any
	// ended.
	PassRate float64 `json:"pass_rate"`
}

// ChangedEvals are the evals whose outcome changed one way: Count of them,
// the first Keys (eval keys, in the order they ended in the head run)
// listed.
type ChangedEvals struct {
	Count int      `json:"count"`
	Keys  []string `json:"keys"`
}

// compareRuns compares the run with ?against for the dashboard's compare
// page. Cost: O(size of both runs) in memory, whatever ?limit (which
// bounds the answer only), and what Redis sends is what ended since the
// server last summed up either run (run.Store.Summarize); the counts of
// the run compared with, O(1).
func (h *Handler) compareRuns(w http.ResponseWriter, r *http.Request) {
	name, ok := runName(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	against := q.Get("against")
	if against == "" {
		writeError(w, http.StatusBadRequest, "against: the run to compare with is missing")
		return
	}
	if err := run.ValidateName(against); err != nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("%s: %s", run.ErrNotFound, against))
		return
	}
	limit, ok := limitParam(w, q, DefaultCompareLimit, MaxCompareLimit)
	if !ok {
		return
	}
	// The base's counts first: O(1), and an unknown base is a 404 before
	// the head is read.
	base, err := h.runs.Progress(r.Context(), against)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	sum, err := h.runs.Summarize(r.Context(), name, against)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	c := sum.Compare
	groups := append([]run.GroupDelta{}, c.Groups...)
	// Stable: groups of the same delta stay in name order.
	slices.SortStableFunc(groups, func(a, b run.GroupDelta) int { return cmp.Compare(a.PassRate.Delta, b.PassRate.Delta) })
	capped := func(keys []string) ChangedEvals {
		return ChangedEvals{Count: len(keys), Keys: keys[:min(len(keys), limit)]}
	}
	writeJSON(w, http.StatusOK, RunComparison{
		Base:     ComparedRun{Name: against, Counts: base, PassRate: passRate(base)},
		Head:     ComparedRun{Name: name, Counts: sum.Counts, PassRate: sum.PassRate},
		PassRate: c.PassRate, Metrics: c.Metrics,
		Groups: groups[:min(len(groups), limit)], GroupCount: len(groups) + c.MoreGroups,
		NewlyFailing: capped(c.NewlyFailing), NewlyPassing: capped(c.NewlyPassing),
	})
}

func (h *Handler) runProgress(w http.ResponseWriter, r *http.Request) {
	name, ok := runName(w, r)
	if !ok {
		return
	}
	c, err := h.runs.Progress(r.Context(), name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// ResultLine is a line of GET /runs/{name}/results: an eval of the run, by
// its eval ID, with its record once it ended, else its status (pending, or
// running with its executor).
type ResultLine struct {
	EvalID string `json:"eval_id"`
	run.Record
}

// FollowError is the last line of a followed results stream that could not
// go on.
type FollowError struct {
	Error string `json:"error"`
}

func (h *Handler) runResults(w http.ResponseWriter, r *http.Request) {
	name, ok := runName(w, r)
	if !ok {
		return
	}
	follow := false
	if s := r.URL.Query().Get("follow"); s != "" {
		var err error
		if follow, err = strconv.ParseBool(s); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("follow %q: want 1 or 0", s))
			return
		}
	}
	if follow && r.Method != http.MethodHead { // a HEAD has no body to follow in
		h.followRun(w, r, name)
		return
	}
	_, rows, err := h.runs.Results(r.Context(), name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	for _, rec := range rows {
		if enc.Encode(ResultLine{EvalID: run.EvalID(name, rec.Key), Record: rec}) != nil {
			return // the client went away
		}
	}
}

// followRun streams the ends of a run's evals: those logged so far, read a
// page at a time, then each as the run's hub reads it, until every eval
// ended.
func (h *Handler) followRun(w http.ResponseWriter, r *http.Request, name string) {
	ctx := r.Context()
	// An unknown run is a 404 before a follower's place is taken.
	if _, err := h.runs.Progress(ctx, name); err != nil {
		h.fail(w, r, err)
		return
	}
	hb, err := h.follows.join(name)
	if err != nil {
		w.Header().Set("Retry-After", "5")
		h.fail(w, r, err)
		return
	}
	var sub *subscription
	defer func() { h.follows.leave(hb, sub) }()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// A followed run may take hours: no write deadline of the server's.
	_ = rc.SetWriteDeadline(time.Time{})
	// The headers now: a follower of a run where nothing ended yet knows it
	// is following.
	_ = rc.Flush()
	enc := json.NewEncoder(w)
	var cursor int64
	write := func(lines [][]byte) bool {
		for _, line := range lines {
			if _, err := w.Write(line); err != nil {
				return false // the client went away
			}
		}
		return rc.Flush() == nil
	}
	fail := func(err error) {
		if err != nil && ctx.Err() == nil {
			h.log.Warn().Err(err).Str("run", name).Msg("api: following a run's results")
			_ = enc.Encode(FollowError{Error: oneLine(err.Error())})
		}
	}
	for {
		// Replay, or catch up after falling behind: the run's log of ends,
		// a page at a time, until the hub is where this follower is.
		for sub == nil {
			lines, next, err := endedLines(ctx, h.runs, name, cursor, h.follows.page)
			if err != nil {
				fail(err)
				return
			}
			if len(lines) > 0 && !write(lines) {
				return
			}
			// A page may hold fewer ends than log entries (those of evals
			// reopened skipped): the cursor moves by the entries.
			full := next-cursor == int64(h.follows.page)
			cursor = max(cursor, next)
			if full {
				continue // more to read before joining
			}
			s, done, err := h.follows.subscribe(hb, cursor)
			if done {
				fail(err)
				return
			}
			sub = s // nil while the hub is ahead: read on
		}
		select {
		case <-ctx.Done():
			return
		case b, ok := <-sub.ch:
			if ok {
				lines := b.lines
				if b.from < cursor {
					// This follower read ahead of its hub: the part past its
					// cursor is read again from the log, as its lines cannot
					// be counted off (skipped ends have none).
					if b.to <= cursor {
						continue
					}
					var err error
					if lines, _, err = endedLines(ctx, h.runs, name, cursor, int(b.to-cursor)); err != nil {
						fail(err)
						return
					}
				}
				if len(lines) > 0 && !write(lines) {
					return
				}
				cursor = max(cursor, b.to)
				continue
			}
			lagged, err := h.follows.closed(hb, sub)
			if !lagged {
				fail(err)
				return
			}
			h.log.Debug().Str("run", name).Int64("cursor", cursor).Msg("api: a follower fell behind its run's hub and catches up from the run's log")
			sub = nil
		}
	}
}

func (h *Handler) cancelRun(w http.ResponseWriter, r *http.Request) {
	name, ok := runName(w, r)
	if !ok {
		return
	}
	var none struct{}
	if !h.decode(w, r, &none, true) {
		return
	}
	// CancelRun also ends the evals a cut-short submission never enqueued.
	c, err := h.c.CancelRun(detach(r), name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, cancelledOf(c))
}

// RetryRequest is the body of POST /runs/{name}/retry: the ends to retry,
// both when neither is set.
type RetryRequest struct {
	Errored bool `json:"errored"`
	Failed  bool `json:"failed"`
}

// RetryAnswer is what a retry enqueued again (client.Retried).
type RetryAnswer struct {
	Name    string `json:"name"`
	Retried int    `json:"retried"`
	Errored int    `json:"errored"`
	Failed  int    `json:"failed"`
}

// retryRun runs a run's errored and/or failed evals again, inside the run
// (client.RetryRun). An eval whose task is gone cannot be retried here (the
// CLI takes the suite): 422, nothing retried.
func (h *Handler) retryRun(w http.ResponseWriter, r *http.Request) {
	name, ok := runName(w, r)
	if !ok {
		return
	}
	var req RetryRequest
	if !h.decode(w, r, &req, true) {
		return
	}
	var opts client.RetryOptions
	if req.Errored {
		opts.Statuses = append(opts.Statuses, run.Errored)
	}
	if req.Failed {
		opts.Statuses = append(opts.Statuses, run.Failed)
	}
	n, err := h.c.RetryRun(detach(r), name, opts)
	if errors.Is(err, client.ErrTaskGone) {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, RetryAnswer{Name: name, Retried: n.Evals(), Errored: n.Errored, Failed: n.Failed})
}

// deref is *p, or the zero value for none.
func deref[T any](p *T) T {
	var v T
	if p != nil {
		v = *p
	}
	return v
}
