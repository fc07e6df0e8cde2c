package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/google/uuid"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/client"
	"github.com/evalpool/evalpool/tasks"
)

// EvalRequest is the body of POST /evals. EvalID defaults to a new UUID.
type EvalRequest struct {
	EvalID   string            `json:"eval_id,omitempty"`
	Spec     json.RawMessage   `json:"spec"`
	Require  map[string]string `json:"require,omitempty"`
	TimeoutS *int64            `json:"timeout_s,omitempty"`
	MaxRetry *int              `json:"max_retry,omitempty"`
	// AllowEmptyPool enqueues to a pool with no executor registered yet,
	// which is otherwise refused (422).
	AllowEmptyPool bool `json:"allow_empty_pool,omitempty"`
}

// EvalCreated is the answer of POST /evals that enqueued the eval.
type EvalCreated struct {
	EvalID string `json:"eval_id"`
}

// Eval is an eval as GET /evals/{id} answers it, as `evalpool eval show
// --json` shows it: its state and outcome, its spec, and its attempts.
type Eval = client.Detail

// lookup reads an eval of the API's pool; a run's eval's result is its
// run's record.
func (h *Handler) lookup(ctx context.Context, id string) (Eval, error) {
	return h.c.Eval(ctx, h.opts.Pool, id)
}

func (h *Handler) submitEval(w http.ResponseWriter, r *http.Request) {
	var req EvalRequest
	if !h.decode(w, r, &req, false) {
		return
	}
	if missingSpec(req.Spec) {
		h.fail(w, r, fmt.Errorf("%w: \"spec\" is missing", tasks.ErrBadPayload))
		return
	}
	timeout, err := timeoutOf(req.TimeoutS)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	opts, err := retryOptions(req.MaxRetry)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	e := tasks.Eval{ID: cmp.Or(req.EvalID, uuid.NewString()), Spec: req.Spec, Require: req.Require, TimeoutS: tasks.TimeoutSeconds(timeout)}
	// An eval submitted again is answered as it is, whatever executors
	// there are now.
	if req.EvalID != "" {
		if h.existing(w, r, e.ID) {
			return
		}
	}
	fresh, err := h.c.Enqueue(detach(r), h.opts.Pool, []tasks.Eval{e}, evalpool.EnqueueOptions{Eval: opts, AllowEmptyPool: req.AllowEmptyPool})
	if err == nil && !fresh[0] && h.existing(w, r, e.ID) {
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", Prefix+"/evals/"+url.PathEscape(e.ID))
	writeJSON(w, http.StatusCreated, EvalCreated{EvalID: e.ID})
}

// existing answers 200 with the eval of that ID if Asynq holds one, and
// says whether it did (it answers errors too, other than not found).
func (h *Handler) existing(w http.ResponseWriter, r *http.Request, id string) bool {
	e, err := h.lookup(r.Context(), id)
	switch {
	case errors.Is(err, client.ErrEvalNotFound):
		return false
	case err != nil:
		h.fail(w, r, err)
		return true
	}
	w.Header().Set("Location", Prefix+"/evals/"+url.PathEscape(id))
	writeJSON(w, http.StatusOK, e)
	return true
}

// getEval reads the eval in the pool of ?pool, else the API's: a run
// submitted to another pool has its evals there. A pool with no such eval,
// or no such pool, is 404.
func (h *Handler) getEval(w http.ResponseWriter, r *http.Request) {
	e, err := h.c.Eval(r.Context(), cmp.Or(r.URL.Query().Get("pool"), h.opts.Pool), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (h *Handler) cancelEval(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var none struct{}
	if !h.decode(w, r, &none, true) {
		return
	}
	// Unknown is 404, and leaves no cancel mark behind.
	if _, err := h.lookup(r.Context(), id); err != nil {
		h.fail(w, r, err)
		return
	}
	c, err := h.c.Cancel(detach(r), h.opts.Pool, []string{id})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, cancelledOf(c))
}
