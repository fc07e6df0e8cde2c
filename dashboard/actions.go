package dashboard

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"

	"github.com/evalpool/evalpool/pool"
)

// Pool actions the pool page offers (POST /api/pool/action).
const (
	ActionQuarantine = "quarantine"
	ActionReturn     = "return"
	ActionRemove     = "remove"
)

// ActionRequest is the body of POST /api/pool/action.
type ActionRequest struct {
	URL    string `json:"url"`
	Action string `json:"action"`
	// Reason is a quarantine's; it defaults to "operator".
	Reason string `json:"reason,omitempty"`
}

// ActionView is its answer: what the pool made of it (pool.QuarantineOutcome
// or pool.DeregisterOutcome).
type ActionView struct {
	URL     string `json:"url"`
	Action  string `json:"action"`
	Outcome string `json:"outcome"`
}

// maxActionBytes bounds an action's body: a URL and a reason.
const maxActionBytes = 8 << 10

// actions reports whether the pool page may act on the pool: with
// Options.Admin and a token only, since anyone who reaches the port could
// act otherwise.
func (d *Dashboard) actions() bool { return d.opts.Admin && d.auth != nil }

// apiPoolAction quarantines an executor, returns it to service or removes
// it (draining it when leased), as `pool quarantine`, `pool
// release-quarantine` and `pool remove` do. Cross-site requests are
// refused before this (ServeHTTP); a JSON body is required too, which no
// HTML form can send.
func (d *Dashboard) apiPoolAction(w http.ResponseWriter, r *http.Request) {
	if !d.actions() {
		refuse(w, r, http.StatusForbidden, "pool actions need the dashboard started with --admin and a token")
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		refuse(w, r, http.StatusUnsupportedMediaType, "send the action as application/json")
		return
	}
	var req ActionRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxActionBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.Decode(&struct{}{}) != io.EOF {
		badRequest(w, "the action's body: want {\"url\": ..., \"action\": \"quarantine\"|\"return\"|\"remove\"}")
		return
	}
	var (
		outcome string
		err     error
	)
	switch req.Action {
	case ActionQuarantine:
		var o pool.QuarantineOutcome
		o, err = d.pool.Quarantine(r.Context(), req.URL, cmp.Or(req.Reason, pool.ReasonOperator))
		outcome = string(o)
	case ActionReturn:
		var o pool.QuarantineOutcome
		o, err = d.pool.ReturnToService(r.Context(), req.URL)
		outcome = string(o)
	case ActionRemove:
		var o pool.DeregisterOutcome
		o, err = d.pool.Deregister(r.Context(), req.URL)
		outcome = string(o)
	default:
		badRequest(w, fmt.Sprintf("action %q: want quarantine, return or remove", req.Action))
		return
	}
	switch {
	case errors.Is(err, pool.ErrInvalid):
		badRequest(w, err.Error())
		return
	case errors.Is(err, pool.ErrUnknownExecutor):
		refuse(w, r, http.StatusNotFound, err.Error())
		return
	case err != nil:
		d.unavailable(w, "pool action", err)
		return
	}
	d.log.Warn().Str("pool", d.pool.Name()).Str("executor", req.URL).Str("action", req.Action).Str("outcome", outcome).Msg("dashboard: pool action")
	writeView(w, ActionView{URL: req.URL, Action: req.Action, Outcome: outcome})
}
