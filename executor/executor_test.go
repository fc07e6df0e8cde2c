package executor

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBadAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"not json", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>oops")) }, "bad answer"},
		{"unknown status", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"status":"maybe"}`)) }, `status "maybe"`},
		{"500", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", 500) }, "500 Internal Server Error: boom"},
		{"empty 200", func(http.ResponseWriter, *http.Request) {}, "bad answer"},
		{"huge", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"status":"passed","output":"`))
			_, _ = w.Write(make([]byte, MaxAnswerBytes))
		}, "longer than"},
		{"closed connection", func(w http.ResponseWriter, _ *http.Request) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		}, "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := httptest.NewServer(tt.handler)
			defer ts.Close()
			_, err := (&Client{}).Run(t.Context(), ts.URL, Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)})
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line holding %q", err, tt.want)
			}
		})
	}
}

// TestStatusErrors: each answer the protocol gives a meaning maps to its
// sentinel error, on Run and on Extend, so that a caller decides with
// errors.Is, never by reading text.
func TestStatusErrors(t *testing.T) {
	t.Parallel()
	answer := func(code int) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "said so", code) }
	}
	tests := []struct {
		call string
		code int
		want error
	}{
		{"run", http.StatusConflict, ErrFenced},
		{"run", http.StatusLocked, ErrBusy},
		{"run", http.StatusUnauthorized, ErrUnauthorized},
		{"run", http.StatusServiceUnavailable, ErrUnavailable},
		{"extend", http.StatusConflict, ErrFenced},
		{"extend", http.StatusNotFound, ErrNotRunning},
		{"extend", http.StatusUnauthorized, ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s %d", tt.call, tt.code), func(t *testing.T) {
			t.Parallel()
			ts := httptest.NewServer(answer(tt.code))
			defer ts.Close()
			c := &Client{}
			var err error
			if tt.call == "run" {
				_, err = c.Run(t.Context(), ts.URL, Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)})
			} else {
				err = c.Extend(t.Context(), ts.URL, "e", 1, time.Second)
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), "said so") {
				t.Fatalf("err = %v, want %v with the executor's words", err, tt.want)
			}
		})
	}
	// A 200 to an extension is the lease extended; any other answer is an
	// error that is none of the above.
	ok := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer ok.Close()
	if err := (&Client{}).Extend(t.Context(), ok.URL, "e", 1, time.Second); err != nil {
		t.Fatalf("extension answered 200: %v", err)
	}
	teapot := httptest.NewServer(answer(http.StatusTeapot))
	defer teapot.Close()
	err := (&Client{}).Extend(t.Context(), teapot.URL, "e", 1, time.Second)
	for _, sentinel := range []error{ErrFenced, ErrNotRunning, ErrUnauthorized} {
		if err == nil || errors.Is(err, sentinel) {
			t.Fatalf("extension answered 418: %v; want an error that is not %v", err, sentinel)
		}
	}
}

// ReadBody reads what io.ReadAll of the body, limited to limit+1 bytes,
// reads, whatever length the answer announced, and however the body comes.
func TestReadBody(t *testing.T) {
	t.Parallel()
	const limit = 16
	boom := errors.New("boom")
	bodies := map[string]func(string) io.Reader{
		"whole":     func(s string) io.Reader { return strings.NewReader(s) },
		"bytewise":  func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) },
		"eof along": func(s string) io.Reader { return iotest.DataErrReader(strings.NewReader(s)) },
		"then error": func(s string) io.Reader {
			return io.MultiReader(strings.NewReader(s), iotest.ErrReader(boom))
		},
	}
	for _, s := range []string{"", "{}", `{"status":"passed"}`[:limit], `{"status":"passed","score":1}`} {
		for name, body := range bodies {
			for _, length := range []int64{-1, 0, int64(len(s)) - 1, int64(len(s)), int64(len(s)) + 1, limit, limit + 1} {
				t.Run(fmt.Sprintf("%s %q announced %d", name, s, length), func(t *testing.T) {
					want, wantErr := io.ReadAll(io.LimitReader(body(s), limit+1))
					got, err := ReadBody(body(s), length, limit)
					if string(got) != string(want) || !errors.Is(err, wantErr) {
						t.Fatalf("read %q, %v; io.ReadAll reads %q, %v", got, err, want, wantErr)
					}
				})
			}
		}
	}
}

// TestParseResult: an errored eval is a result, with why and the ends of
// the grader's output, which the client bounds; a status outside the
// protocol is a bad answer.
func TestParseResult(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", MaxTailBytes) // 2 bytes a rune: cut in one
	tests := []struct {
		name, body string
		want       func(Result) bool
		err        error
	}{
		{"passed", `{"status":"passed","score":1,"stdout":"progress: 50%"}`, func(r Result) bool { return r.Status == StatusPassed && r.Stdout == "progress: 50%" }, nil},
		{"errored", `{"status":"errored","error":"exit status 3","exit_code":3,"stderr":"Traceback"}`,
			func(r Result) bool {
				return r.Status == StatusErrored && *r.ExitCode == 3 && r.Error == "exit status 3" && r.Stderr == "Traceback"
			}, nil},
		{"long stderr keeps its end", `{"status":"errored","stderr":"` + long + `end"}`,
			func(r Result) bool {
				return len(r.Stderr) <= MaxTailBytes && strings.HasSuffix(r.Stderr, "éend") && strings.HasPrefix(r.Stderr, "é")
			}, nil},
		{"unknown status", `{"status":"crashed"}`, nil, ErrBadAnswer},
		{"metrics", `{"status":"passed","metrics":{"accuracy":1,"f1":0.7,"pass.rate_2":0}}`,
			func(r Result) bool { return len(r.Metrics) == 3 && r.Metrics["f1"] == 0.7 }, nil},
		{"a null metric is none", `{"status":"passed","metrics":{"f1":null,"accuracy":1}}`,
			func(r Result) bool { _, null := r.Metrics["f1"]; return len(r.Metrics) == 1 && !null }, nil},
		{"metric named with a space", `{"status":"passed","metrics":{"no spaces":1}}`, nil, ErrBadAnswer},
		{"metric named with a digit first", `{"status":"passed","metrics":{"1st":1}}`, nil, ErrBadAnswer},
		{"metric that is no number", `{"status":"passed","metrics":{"f1":"high"}}`, nil, ErrBadAnswer},
		{"too many metrics", `{"status":"passed","metrics":{` + manyMetrics(MaxMetrics+1) + `}}`, nil, ErrBadAnswer},
		{"as many metrics as may be", `{"status":"passed","metrics":{` + manyMetrics(MaxMetrics) + `}}`,
			func(r Result) bool { return len(r.Metrics) == MaxMetrics }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := ParseResult([]byte(tt.body))
			if !errors.Is(err, tt.err) || tt.want != nil && (err != nil || !tt.want(r)) {
				t.Fatalf("ParseResult = %+v, %v", r, err)
			}
		})
	}
}

// manyMetrics is n metrics as the members of a JSON object.
func manyMetrics(n int) string {
	ms := make([]string, n)
	for i := range ms {
		ms[i] = fmt.Sprintf(`"m%d":%d`, i, i)
	}
	return strings.Join(ms, ",")
}
