package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/evalpool/evalpool/run"
)

// EvalRow is an ended eval of GET /runs/{name}/evals: its record less its
// output and metrics, and why it failed in one line.
type EvalRow struct {
	EvalID   string   `json:"eval_id"`
	Key      string   `json:"key"`
	Status   string   `json:"status"`
	Score    *float64 `json:"score,omitempty"`
	Group    string   `json:"group,omitempty"`
	Epoch    int      `json:"epoch,omitempty"`
	Executor string   `json:"executor,omitempty"`
	Duration float64  `json:"duration_seconds,omitempty"`
	Retries  int      `json:"retries"`
	// EndedAt is absent from a record that has no time.
	EndedAt time.Time `json:"ended_at,omitzero"`
	Reason  string    `json:"reason,omitempty"`
}

// EvalsAnswer is the answer of GET /runs/{name}/evals.
type EvalsAnswer struct {
	Evals []EvalRow `json:"evals"`
	// NextCursor is where the next page starts, "" when this one read to
	// the end of the run's log of ends.
	NextCursor string `json:"next_cursor"`
	// Counts are the run's, read in the same step as the page.
	Counts run.Counts `json:"counts"`
}

// evalsParams are the query parameters of GET /runs/{name}/evals.
var evalsParams = map[string]bool{"status": true, "group": true, "executor": true, "q": true, "cursor": true, "limit": true}

// runEvals serves a page of a run's ended evals, in the order they ended,
// filtered by ?status, ?group, ?executor (exact) and ?q (a case-insensitive
// substring of the eval ID or the reason), from ?cursor, at most ?limit.
//
// Cost, whatever the run's size: one read of the run's counts and of at
// most run.EvalsScan (1,000) entries of its log of ends from the cursor,
// then their records, limit at first, then twice as many and so on until
// the page is full: O(limit) records when most evals match, at most
// run.EvalsScan when few do. A page that stopped at the bound holds fewer
// than limit, even none, and the next_cursor to read on from.
func (h *Handler) runEvals(w http.ResponseWriter, r *http.Request) {
	name, ok := runName(w, r)
	if !ok {
		return
	}
	query := r.URL.Query()
	for p := range query {
		if !evalsParams[p] {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown parameter %q: want status, group, executor, q, cursor or limit", p))
			return
		}
	}
	q := run.EvalsQuery{Status: query.Get("status"), Group: query.Get("group"), Executor: query.Get("executor"), Text: query.Get("q")}
	if s := query.Get("cursor"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("cursor %q: want a next_cursor of this endpoint", s))
			return
		}
		q.Cursor = n
	}
	if q.Limit, ok = limitParam(w, query, run.DefaultEvalsLimit, run.MaxEvalsLimit); !ok {
		return
	}
	page, err := h.runs.Evals(r.Context(), name, q)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	a := EvalsAnswer{Evals: make([]EvalRow, len(page.Records)), Counts: page.Counts}
	if page.Next != 0 {
		a.NextCursor = strconv.FormatInt(page.Next, 10)
	}
	for i, rec := range page.Records {
		a.Evals[i] = EvalRow{EvalID: run.EvalID(name, rec.Key), Key: rec.Key, Status: rec.Status, Score: rec.Score, Group: rec.Group, Epoch: rec.Epoch,
			Executor: rec.Executor, Duration: rec.Duration, Retries: rec.Retries, EndedAt: rec.At, Reason: rec.Reason()}
	}
	writeJSON(w, http.StatusOK, a)
}
