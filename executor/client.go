package executor

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Paths of the protocol.
const (
	PathEvals  = "/v1/evals"
	PathLease  = "/v1/lease"
	PathHealth = "/healthz"
	PathStats  = "/v1/stats"
)

// Headers of the protocol.
const (
	// DeadlineHeader carries, in unix milliseconds, when the caller stops
	// waiting for an eval: the executor gives up then.
	DeadlineHeader = "X-Evalpool-Deadline"
	// SignatureHeader carries a request's signature: "v2=" and when it
	// was signed, its body's digest and its HMAC-SHA256 (see SignV2), or
	// the older "v1=" and the hex of its HMAC-SHA256 (see Sign).
	SignatureHeader = "X-Evalpool-Signature"
)

// EnvSecret is the environment variable that holds the secret shared by
// executors and the workers that call them.
const EnvSecret = "EVALPOOL_EXECUTOR_SECRET"

// Eval outcomes an executor reports: a grade (passed, failed), or errored
// when the eval has no grade by its own fault (its grader crashed, timed
// out, or gave no result). An executor that could not run the eval at all
// answers 5xx instead: that is the executor's fault.
const (
	StatusPassed  = "passed"
	StatusFailed  = "failed"
	StatusErrored = "errored"
)

// MaxTailBytes bounds each of a result's Stdout and Stderr as the client
// keeps them: a longer one keeps its end. Executors send less (the
// reference sends DefaultTail unless told otherwise).
const MaxTailBytes = 64 << 10

// MaxAnswerBytes bounds an executor's answer; a longer one is a bad answer.
const MaxAnswerBytes = 4 << 20

// MaxRequestBytes bounds the body of a request to an executor: a spec is at
// most 1 MiB, and the rest is room for the envelope and JSON escaping. The
// reference executor refuses a longer body with a 413.
const MaxRequestBytes = 2 << 20

// maxSmallAnswer bounds answers that are not results: health, extensions.
const maxSmallAnswer = 64 << 10

var (
	// ErrFenced means the executor refused the eval or its extension (409):
	// it has seen a higher fence, so the lease that sent it is no longer
	// the executor's holder, or the eval's lease is over there. The error
	// is a *RefusedError, whose Reason says which.
	ErrFenced = errors.New("executor: refused")
	// ErrNotRunning means an extension found no eval under that eval ID and
	// fence: it has finished, or its request has not reached the executor
	// yet. An executor that does not know extensions answers the same. It is
	// no reason to give up the eval: its own answer says how it ended.
	ErrNotRunning = errors.New("executor: no such eval running")
	// ErrBusy means the executor refused the eval, untouched, because
	// another eval runs there under a lease that is still live: the pool
	// handed the executor out twice (Redis lost writes, or one executor is
	// registered twice). The eval never ran; its lease should go back.
	ErrBusy = errors.New("executor: busy: another eval holds it under a live lease")
	// ErrUnauthorized means the executor refused a request whose signature
	// it could not verify: the client has no secret, or not the executor's.
	ErrUnauthorized = errors.New("executor: unauthorized: bad or missing signature")
	// ErrBadAnswer means the executor answered something that is not a
	// result: not JSON, an unknown status, too big.
	ErrBadAnswer = errors.New("executor: bad answer")
	// ErrEarlyDeadline means the executor stopped the eval at the deadline
	// it was sent (504) while the caller's own had not come: its answer's
	// time stamp shows its clock past that deadline. The clocks differ; the
	// executor is not at fault, and the client has learned its clock from
	// that answer.
	ErrEarlyDeadline = errors.New("executor: stopped the eval at its deadline before the caller's came: the clocks differ")
	// ErrUnavailable means the executor did not serve the call: the
	// connection failed, or no answer came before the call's deadline, or
	// it answered 5xx. With ErrBadAnswer, it is what Unavailable reports:
	// the executor's fault, not the eval's.
	ErrUnavailable = errors.New("executor: unavailable")
)

// Unavailable reports whether err says the executor itself failed the call
// (ErrUnavailable, ErrBadAnswer), as opposed to the eval failing, the
// caller giving up, or the executor refusing an eval it should refuse. The
// pool counts these to quarantine an executor.
func Unavailable(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrBadAnswer)
}

// Reason is why an executor refused an eval or an extension (409), as it
// says in the "reason" field of its answer.
type Reason string

// The reasons of the protocol. An executor that gives none leaves it empty.
const (
	// ReasonStaleFence: a fence not above the highest the executor has seen.
	ReasonStaleFence Reason = "stale_fence"
	// ReasonPreempted: a higher fence took the executor over.
	ReasonPreempted Reason = "preempted"
	// ReasonLeaseExpired: the lease passed at the executor without an
	// extension, and it stopped the eval.
	ReasonLeaseExpired Reason = "lease_expired"
	// ReasonLeaseOverOnArrival: by sent_at_ms and lease_ms the lease was
	// over when the request arrived (delayed, replayed, or the clocks
	// differ).
	ReasonLeaseOverOnArrival Reason = "lease_over_on_arrival"
	// ReasonStopping: the eval is stopping for another cause (its caller
	// left, its deadline passed).
	ReasonStopping Reason = "stopping"
)

// Timing reports whether the executor refused for time alone: the lease
// ran out there, or was over on arrival. Nobody else holds the executor;
// the extensions came too late, or the clocks differ.
func (r Reason) Timing() bool { return r == ReasonLeaseExpired || r == ReasonLeaseOverOnArrival }

func (r Reason) String() string {
	switch r {
	case ReasonStaleFence:
		return "a newer lease holds the executor (stale fence)"
	case ReasonPreempted:
		return "preempted by a higher fence"
	case ReasonLeaseExpired:
		return "the lease ran out at the executor without an extension"
	case ReasonLeaseOverOnArrival:
		return "the lease was over when the request arrived (delayed, replayed, or the clocks differ)"
	case ReasonStopping:
		return "the eval is stopping"
	case "":
		return "a newer lease holds the executor, or the lease is over there (it gave no reason)"
	}
	return "reason " + strconv.Quote(string(r))
}

// RefusedError is a 409 from an executor, with its reason. It is ErrFenced
// (errors.Is).
type RefusedError struct {
	URL    string
	Reason Reason
	// MaxFence is the highest fence the executor has seen, when it says
	// (a stale_fence refusal of the reference executor does): a pool whose
	// fence for the executor is below it raises it, so that its next grant
	// passes.
	MaxFence int64
	// Answer is the start of the executor's answer, on one line.
	Answer string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%v: %s: %s: %s", ErrFenced, e.Reason, e.URL, e.Answer)
}

// Is makes a RefusedError ErrFenced.
func (e *RefusedError) Is(target error) bool { return target == ErrFenced }

// refused reads a 409's reason from its JSON body, {"error", "reason"}.
func refused(baseURL string, answer []byte) error {
	var body struct {
		Reason   Reason `json:"reason"`
		MaxFence int64  `json:"max_fence"`
	}
	_ = json.Unmarshal(answer, &body)
	if len(body.Reason) > 64 {
		body.Reason = ""
	}
	return &RefusedError{URL: baseURL, Reason: body.Reason, MaxFence: max(body.MaxFence, 0), Answer: Snippet(answer)}
}

// RefusalReason is the reason of the RefusedError in err's chain, and false
// when there is none.
func RefusalReason(err error) (Reason, bool) {
	var r *RefusedError
	if errors.As(err, &r) {
		return r.Reason, true
	}
	return "", false
}

// Request is the body of POST /v1/evals.
type Request struct {
	EvalID string          `json:"eval_id"`
	Fence  int64           `json:"fence"`
	Spec   json.RawMessage `json:"spec"`
	// LeaseMs is the time left on the caller's lease when it sent the
	// request, in milliseconds. A lease-aware executor stops the eval when
	// that much time has passed since it received the request, unless an
	// extension (Client.Extend) moved the lease's end. 0 means no lease: only
	// the deadline bounds the eval.
	LeaseMs int64 `json:"lease_ms,omitempty"`
	// SentAtMs is when the caller measured LeaseMs (unix ms), in the
	// executor's clock as far as the caller knows it and never later: the
	// executor's last stamp (TimeHeader) carried forward from when its
	// answer arrived, or the caller's wall clock for an executor that never
	// told its time. The executor ends the lease at the earlier of its
	// receive time plus LeaseMs and SentAtMs plus LeaseMs on its own clock,
	// so that a request delayed in the network, or replayed, never carries
	// the lease past its end. Run sets it.
	SentAtMs int64 `json:"sent_at_ms,omitempty"`
}

// Extension is the body of POST /v1/lease: the lease of the eval running
// under EvalID and Fence ends LeaseMs after the executor receives it, and
// no later than SentAtMs plus LeaseMs (see Request).
type Extension struct {
	EvalID   string `json:"eval_id"`
	Fence    int64  `json:"fence"`
	LeaseMs  int64  `json:"lease_ms"`
	SentAtMs int64  `json:"sent_at_ms,omitempty"`
}

// Result is an executor's answer to an eval.
type Result struct {
	// Status is StatusPassed, StatusFailed or StatusErrored.
	Status string   `json:"status"`
	Score  *float64 `json:"score,omitempty"`
	// Metrics are named measures of the eval besides its score
	// ("accuracy": 1, "f1": 0.7), which a run averages: at most MaxMetrics,
	// each name a MetricName.
	Metrics map[string]float64 `json:"metrics,omitempty"`
	Output  json.RawMessage    `json:"output,omitempty"`
	Diagnostics
}

// MaxMetrics bounds the metrics of one result.
const MaxMetrics = 32

// metricName is what a metric may be called: what a CSV header, a
// Prometheus label and a URL carry as they are.
var metricName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$`)

// CheckMetrics refuses metrics past MaxMetrics or with a name that is not 1
// to 64 letters, digits or "_.:-" starting with a letter or "_".
func CheckMetrics(m map[string]float64) error {
	if len(m) > MaxMetrics {
		return fmt.Errorf("%d metrics, more than %d", len(m), MaxMetrics)
	}
	for name := range m {
		if !metricName.MatchString(name) {
			return fmt.Errorf("metric name %q: want 1 to 64 letters, digits or _.:- starting with a letter or _", name)
		}
	}
	return nil
}

// Diagnostics are what an answer says besides its grade: why an eval has
// none, and what its grader wrote. The worker keeps them with the eval's
// result (tasks.EvalResult) as they came.
type Diagnostics struct {
	// Error says why an errored eval has no grade: "exit status 3", "no
	// result on stdout", "timed out after 30s".
	Error string `json:"error,omitempty"`
	// ExitCode is the exit code of the grader's process when it exited
	// with one other than 0 (not when a signal ended it).
	ExitCode *int `json:"exit_code,omitempty"`
	// Stdout and Stderr are the ends of what the grader wrote besides its
	// result: its log, kept with the result. At most MaxTailBytes each.
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
}

// Health is an executor's answer to GET /healthz.
type Health struct {
	Status string `json:"status"`
	// InstanceID names the executor process: the same for its whole life,
	// new when it restarts. Empty for an executor that does not say.
	InstanceID string `json:"instance_id"`
}

// ParseResult decodes and checks an executor's answer.
func ParseResult(body []byte) (Result, error) {
	// Metrics are read as pointers, shadowing Result's: a null metric
	// ("not computed", Python's None) is no metric, where a float64 would
	// read it as 0 and pull the mean down.
	var answer struct {
		Result
		Metrics map[string]*float64 `json:"metrics"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return Result{}, fmt.Errorf("%w: %w: %s", ErrBadAnswer, err, Snippet(body))
	}
	r := answer.Result
	if r.Status != StatusPassed && r.Status != StatusFailed && r.Status != StatusErrored {
		return Result{}, fmt.Errorf("%w: status %q, want %q, %q or %q", ErrBadAnswer, r.Status, StatusPassed, StatusFailed, StatusErrored)
	}
	for name, v := range answer.Metrics {
		if v == nil {
			continue
		}
		if r.Metrics == nil {
			r.Metrics = make(map[string]float64, len(answer.Metrics))
		}
		r.Metrics[name] = *v
	}
	if err := CheckMetrics(r.Metrics); err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrBadAnswer, err)
	}
	r.Stdout, r.Stderr = Tail(r.Stdout, MaxTailBytes), Tail(r.Stderr, MaxTailBytes)
	return r, nil
}

// Tail is the last n bytes of s, or fewer: a rune cut at the start is
// dropped, and so is any byte that is not UTF-8.
func Tail(s string, n int) string {
	if len(s) > n {
		s = s[len(s)-max(n, 0):]
	}
	return strings.ToValidUTF8(s, "")
}

// parseHealth reads a 200 answer to GET /healthz: the JSON of the reference
// executor, or the plain "ok" of an executor that predates instance IDs.
func parseHealth(body []byte) Health {
	var h Health
	if json.Unmarshal(body, &h) == nil {
		return h
	}
	return Health{Status: strings.TrimSpace(string(body[:min(len(body), 64)]))}
}

// Sign returns the value of the SignatureHeader of a request, version 1,
// which executors accept only while told to (a rolling upgrade; see
// SignV2, which the client sends): "v1=" and the hex of HMAC-SHA256(secret, method "\n" path "\n" deadline "\n" body), where
// path is the path on the request line and deadline the DeadlineHeader's
// value, empty when there is none. The deadline is signed so that a replayed
// request cannot be given more time.
func Sign(secret []byte, method, path, deadline string, body []byte) string {
	return "v1=" + hex.EncodeToString(mac(secret, method, path, deadline, body))
}

// Verify reports whether signature, a SignatureHeader's value, is the one
// Sign gives for the request, comparing in constant time: an executor that
// checks signatures with it tells a forger nothing by how fast it refuses.
// path is the path on the request line as received, the prefix of an
// executor mounted under one included.
func Verify(secret []byte, signature, method, path, deadline string, body []byte) bool {
	hexMAC, ok := strings.CutPrefix(signature, "v1=")
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexMAC)
	if err != nil {
		return false
	}
	return hmac.Equal(got, mac(secret, method, path, deadline, body))
}

func mac(secret []byte, method, path, deadline string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	_, _ = io.WriteString(m, method+"\n"+path+"\n"+deadline+"\n")
	_, _ = m.Write(body)
	return m.Sum(nil)
}

// Client calls executors. The zero value is usable.
type Client struct {
	// HTTP sends the requests. Defaults to a client with no overall timeout
	// (the context given to Run bounds every call) that keeps up to 64 idle
	// connections per host, not net/http's 2: executors behind one address
	// (a gateway, a fleet) would otherwise cost a new connection per eval.
	HTTP *http.Client
	// Secret, when set, signs every POST (see SignV2), as executors started
	// with the same secret require. An executor without a secret ignores the
	// signature. Defaults to none.
	Secret []byte
	// Now is the caller's wall clock. It dates requests only for
	// executors that never told their time; an executor that does is dated
	// in its own clock. Defaults to time.Now.
	Now func() time.Time

	mu     sync.Mutex
	clocks map[string]*stamps // by base URL: what each executor's answers said of its clock
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

// post sends a POST, signed when the client has a secret, and reads up to
// limit+1 bytes of the answer. The context's deadline travels in the
// executor's clock (execTime's upper bound); deadlineMs is what was sent, 0
// for none.
func (c *Client) post(ctx context.Context, baseURL, path string, body []byte, limit int64, sent time.Time) (resp *http.Response, answer []byte, deadlineMs int64, err error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, 0, fmt.Errorf("executor %s: %w", baseURL, err)
	}
	hr.Header.Set("Content-Type", "application/json")
	if d, ok := ctx.Deadline(); ok {
		_, hi := c.execTime(baseURL, sent)
		deadlineMs = hi + (time.Until(d) + time.Millisecond - 1).Milliseconds()
		hr.Header.Set(DeadlineHeader, strconv.FormatInt(deadlineMs, 10))
	}
	if len(c.Secret) > 0 {
		signedAt, _ := c.execTime(baseURL, sent)
		hr.Header.Set(SignatureHeader, SignV2(c.Secret, hr.Method, hr.URL.Host, hr.URL.EscapedPath(), hr.Header.Get(DeadlineHeader), signedAt, body))
	}
	resp, err = c.httpClient().Do(hr)
	if err != nil {
		return nil, nil, 0, unavailable(ctx, baseURL, "", err)
	}
	c.learn(baseURL, resp.Header, sent, c.now())
	defer resp.Body.Close()
	answer, err = ReadBody(resp.Body, resp.ContentLength, limit)
	if err != nil {
		return nil, nil, 0, unavailable(ctx, baseURL, "read answer: ", err)
	}
	return resp, answer, deadlineMs, nil
}

// ReadBody reads r to its end, but no more than limit+1 bytes: the one more
// tells a body over the limit, which the caller refuses. A body of announced
// length (every request and answer of the reference executor) costs one
// allocation of its size; one of unknown length doubles its buffer from 512
// bytes up to that bound. The client reads answers with it, and the
// reference executor requests.
func ReadBody(r io.Reader, length, limit int64) ([]byte, error) {
	b := make([]byte, 0, min(max(length, 0), limit)+1)
	for {
		if len(b) == cap(b) {
			if int64(len(b)) > limit {
				return b, nil
			}
			grown := make([]byte, len(b), min(max(2*int64(cap(b)), 512), limit+1))
			copy(grown, b)
			b = grown
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// unavailable wraps a failed call in ErrUnavailable, unless it failed
// because the caller cancelled it: that says nothing of the executor.
func unavailable(ctx context.Context, baseURL, what string, err error) error {
	if errors.Is(context.Cause(ctx), context.Canceled) || errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("executor %s: %s%w", baseURL, what, err)
	}
	return fmt.Errorf("%w: %s: %s%w", ErrUnavailable, baseURL, what, err)
}

// Run sends one eval to the executor at baseURL and waits for its answer.
// The context's deadline travels with the request, so the executor stops
// the eval when the caller stops waiting; so does req.LeaseMs, so a
// lease-aware executor stops it when the lease passes unextended. Both are
// dated in the executor's clock when it has told its time (TimeHeader).
func (c *Client) Run(ctx context.Context, baseURL string, req Request) (Result, error) {
	sent := c.now()
	if req.LeaseMs > 0 && req.SentAtMs == 0 {
		req.SentAtMs, _ = c.execTime(baseURL, sent)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return Result{}, fmt.Errorf("executor: encode eval %s: %w", req.EvalID, err)
	}
	resp, answer, deadlineMs, err := c.post(ctx, baseURL, PathEvals, body, MaxAnswerBytes, sent)
	if err != nil {
		return Result{}, err
	}
	switch {
	case resp.StatusCode == http.StatusConflict:
		return Result{}, refused(baseURL, answer)
	case resp.StatusCode == http.StatusLocked:
		return Result{}, fmt.Errorf("%w: %s: %s", ErrBusy, baseURL, Snippet(answer))
	case resp.StatusCode == http.StatusUnauthorized:
		return Result{}, fmt.Errorf("%w: %s: %s", ErrUnauthorized, baseURL, Snippet(answer))
	case resp.StatusCode == http.StatusGatewayTimeout && early(ctx, resp.Header, deadlineMs):
		return Result{}, fmt.Errorf("%w: %s: %s", ErrEarlyDeadline, baseURL, Snippet(answer))
	case resp.StatusCode/100 == 5:
		return Result{}, fmt.Errorf("%w: %s answered %s: %s", ErrUnavailable, baseURL, resp.Status, Snippet(answer))
	case resp.StatusCode/100 != 2:
		return Result{}, fmt.Errorf("executor %s answered %s: %s", baseURL, resp.Status, Snippet(answer))
	case len(answer) > MaxAnswerBytes:
		return Result{}, fmt.Errorf("%w: %s: answer longer than %d bytes", ErrBadAnswer, baseURL, MaxAnswerBytes)
	}
	r, err := ParseResult(answer)
	if err != nil {
		return Result{}, fmt.Errorf("executor %s: %w", baseURL, err)
	}
	return r, nil
}

// early reports whether a 504 came from an executor whose clock had
// reached the deadline it was sent while the caller's had not: the answer's
// stamp is at or past that deadline, and the caller's deadline is still
// more than earlyMargin away. A 504 without a stamp (a gateway's) is the
// executor's unavailability, as any 5xx.
func early(ctx context.Context, h http.Header, deadlineMs int64) bool {
	d, ok := ctx.Deadline()
	ms, err := strconv.ParseInt(h.Get(TimeHeader), 10, 64)
	return ok && deadlineMs > 0 && err == nil && ms >= deadlineMs && time.Until(d) > earlyMargin
}

// earlyMargin is how long before the caller's deadline a 504 must come to
// be early: less is the ordinary race of two clocks reaching one deadline.
const earlyMargin = time.Second

// Extend tells the executor at baseURL that the lease of the eval it runs
// under evalID and fence has remaining time left from now, so that a
// lease-aware executor keeps running it. remaining is sent in whole
// milliseconds, rounded down: the executor counts from when it receives the
// extension, a little later than now, so it must not also be given the
// fraction; sent_at_ms is in the executor's clock, as Run's. The errors
// that matter are a *RefusedError, ErrFenced (the executor belongs to a
// newer lease, or the eval's lease is over there: its Reason says which),
// and ErrNotRunning (nothing to extend: keep waiting for Run's answer).
func (c *Client) Extend(ctx context.Context, baseURL, evalID string, fence int64, remaining time.Duration) error {
	ms := remaining.Milliseconds()
	if ms <= 0 {
		return fmt.Errorf("executor %s: extend eval %s fence %d: the lease has no time left (%s)", baseURL, evalID, fence, remaining)
	}
	sent := c.now()
	sentAt, _ := c.execTime(baseURL, sent)
	return c.extend(ctx, baseURL, Extension{EvalID: evalID, Fence: fence, LeaseMs: ms, SentAtMs: sentAt}, sent)
}

func (c *Client) extend(ctx context.Context, baseURL string, ext Extension, sent time.Time) error {
	body, err := json.Marshal(ext)
	if err != nil {
		return fmt.Errorf("executor: encode extension of eval %s: %w", ext.EvalID, err)
	}
	resp, answer, _, err := c.post(ctx, baseURL, PathLease, body, maxSmallAnswer, sent)
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusConflict:
		return refused(baseURL, answer)
	case http.StatusNotFound:
		return fmt.Errorf("%w: %s: %s", ErrNotRunning, baseURL, Snippet(answer))
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: %s: %s", ErrUnauthorized, baseURL, Snippet(answer))
	default:
		return fmt.Errorf("executor %s: extension answered %s: %s", baseURL, resp.Status, Snippet(answer))
	}
}

// signatureCheckEval names the eval of CheckSignature's extension: no
// executor runs an eval of that ID, and fence 0 is above no fence seen.
const signatureCheckEval = "evalpool:signature-check"

// CheckSignature asks the executor at baseURL whether it accepts this
// client's signature, with a request that changes nothing: the extension
// of an eval no executor runs, under fence 0, which can raise no fence. An
// executor checks the signature before anything else, so a 200, 404 or
// 409 (the reference's answers) accepts it: nil. A 401 is ErrUnauthorized;
// anything else says nothing of the signature (no answer is
// ErrUnavailable). The answer also tells the client the executor's time.
func (c *Client) CheckSignature(ctx context.Context, baseURL string) error {
	sent := c.now()
	sentAt, _ := c.execTime(baseURL, sent)
	err := c.extend(ctx, baseURL, Extension{EvalID: signatureCheckEval, LeaseMs: 1, SentAtMs: sentAt}, sent)
	if errors.Is(err, ErrFenced) || errors.Is(err, ErrNotRunning) {
		return nil
	}
	return err
}

// Health asks the executor at baseURL how it is: GET /healthz. Any 200 is
// healthy; an executor that answers plain text instead of JSON has that
// text as its status and no instance ID.
func (c *Client) Health(ctx context.Context, baseURL string) (Health, error) {
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+PathHealth, nil)
	if err != nil {
		return Health{}, fmt.Errorf("executor %s: %w", baseURL, err)
	}
	sent := c.now()
	resp, err := c.httpClient().Do(hr)
	if err != nil {
		return Health{}, fmt.Errorf("executor %s: %w", baseURL, err)
	}
	c.learn(baseURL, resp.Header, sent, c.now())
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSmallAnswer))
	if err != nil {
		return Health{}, fmt.Errorf("executor %s: read health: %w", baseURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Health{}, fmt.Errorf("executor %s: health check answered %s", baseURL, resp.Status)
	}
	return parseHealth(body), nil
}

// Healthy reports whether GET /healthz answers 200.
func (c *Client) Healthy(ctx context.Context, baseURL string) error {
	_, err := c.Health(ctx, baseURL)
	return err
}

// Snippet is the start of a body, on one line, as the client's errors quote
// an executor's answer: an executor that quotes what it ran (the reference
// one quotes a failed command's stderr) reads the same.
func Snippet(b []byte) string {
	s := strings.Join(strings.Fields(string(b[:min(len(b), 200)])), " ")
	if len(b) > 200 {
		s += "…"
	}
	if s == "" {
		return "(empty)"
	}
	return s
}
