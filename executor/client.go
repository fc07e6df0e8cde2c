// Package executor is the HTTP protocol between evalpool and an executor: the
// client a worker uses, and the reference server behind `evalpool executor`.
//
// The protocol is small on purpose (DESIGN.md, "Executor protocol"): one POST
// per eval carrying the lease's fencing number, so that the executor itself
// can refuse a holder whose lease has passed to someone else. The pool makes
// double booking impossible as long as every holder behaves; the fence makes
// it harmless when one does not (a worker paused past its lease, a zombie
// request still in flight).
package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Paths of the protocol.
const (
	PathEvals   = "/v1/evals"
	PathHealth  = "/healthz"
	PathStats   = "/v1/stats"
	deadlineHdr = "X-Evalpool-Deadline" // unix ms: when the executor must give up
)

// Eval outcomes an executor reports.
const (
	StatusPassed = "passed"
	StatusFailed = "failed"
)

// MaxAnswerBytes bounds an executor's answer; a longer one is a bad answer.
const MaxAnswerBytes = 4 << 20

var (
	// ErrFenced means the executor refused the eval: it has seen a higher
	// fence, so the lease that sent it is no longer the executor's holder.
	ErrFenced = errors.New("executor: refused: a newer lease holds the executor")
	// ErrBadAnswer means the executor answered something that is not a
	// result: not JSON, an unknown status, too big.
	ErrBadAnswer = errors.New("executor: bad answer")
)

// Request is the body of POST /v1/evals.
type Request struct {
	EvalID string          `json:"eval_id"`
	Fence  int64           `json:"fence"`
	Spec   json.RawMessage `json:"spec"`
}

// Result is an executor's answer to an eval.
type Result struct {
	Status string          `json:"status"`
	Score  *float64        `json:"score,omitempty"`
	Output json.RawMessage `json:"output,omitempty"`
}

// ParseResult decodes and checks an executor's answer.
func ParseResult(body []byte) (Result, error) {
	var r Result
	if err := json.Unmarshal(body, &r); err != nil {
		return Result{}, fmt.Errorf("%w: %w: %s", ErrBadAnswer, err, snippet(body))
	}
	if r.Status != StatusPassed && r.Status != StatusFailed {
		return Result{}, fmt.Errorf("%w: status %q, want %q or %q", ErrBadAnswer, r.Status, StatusPassed, StatusFailed)
	}
	return r, nil
}

// Client calls executors. The zero value is usable.
type Client struct {
	// HTTP sends the requests. Defaults to a client with no overall timeout
	// (the context given to Run bounds every call) that keeps up to 64 idle
	// connections per host, not net/http's 2: executors behind one address
	// (a gateway, a fleet) would otherwise cost a new connection per eval.
	HTTP *http.Client
}

var defaultHTTP = &http.Client{Transport: func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return t
}()}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultHTTP
}

// Run sends one eval to the executor at baseURL and waits for its answer.
// The context's deadline travels with the request, so the executor stops
// the eval when the caller stops waiting.
func (c *Client) Run(ctx context.Context, baseURL string, req Request) (Result, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return Result{}, fmt.Errorf("executor: encode eval %s: %w", req.EvalID, err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+PathEvals, bytes.NewReader(body))
	if err != nil {
		return Result{}, fmt.Errorf("executor %s: %w", baseURL, err)
	}
	hr.Header.Set("Content-Type", "application/json")
	if d, ok := ctx.Deadline(); ok {
		hr.Header.Set(deadlineHdr, strconv.FormatInt(d.UnixMilli(), 10))
	}
	resp, err := c.httpClient().Do(hr)
	if err != nil {
		return Result{}, fmt.Errorf("executor %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerBytes+1))
	if err != nil {
		return Result{}, fmt.Errorf("executor %s: read answer: %w", baseURL, err)
	}
	switch {
	case resp.StatusCode == http.StatusConflict:
		return Result{}, fmt.Errorf("%w: %s: %s", ErrFenced, baseURL, snippet(answer))
	case resp.StatusCode/100 != 2:
		return Result{}, fmt.Errorf("executor %s answered %s: %s", baseURL, resp.Status, snippet(answer))
	case len(answer) > MaxAnswerBytes:
		return Result{}, fmt.Errorf("%w: %s: answer longer than %d bytes", ErrBadAnswer, baseURL, MaxAnswerBytes)
	}
	r, err := ParseResult(answer)
	if err != nil {
		return Result{}, fmt.Errorf("executor %s: %w", baseURL, err)
	}
	return r, nil
}

// Healthy reports whether GET /healthz answers 200.
func (c *Client) Healthy(ctx context.Context, baseURL string) error {
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+PathHealth, nil)
	if err != nil {
		return fmt.Errorf("executor %s: %w", baseURL, err)
	}
	resp, err := c.httpClient().Do(hr)
	if err != nil {
		return fmt.Errorf("executor %s: %w", baseURL, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("executor %s: health check answered %s", baseURL, resp.Status)
	}
	return nil
}

// snippet is the start of a body, on one line, for error messages.
func snippet(b []byte) string {
	s := strings.Join(strings.Fields(string(b[:min(len(b), 200)])), " ")
	if len(b) > 200 {
		s += "…"
	}
	if s == "" {
		return "(empty)"
	}
	return s
}

// deadlineFrom reads the caller's deadline from a request, if it sent one.
func deadlineFrom(r *http.Request) (time.Time, bool) {
	ms, err := strconv.ParseInt(r.Header.Get(deadlineHdr), 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}
