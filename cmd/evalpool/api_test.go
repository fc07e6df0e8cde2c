package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	evalrun "github.com/evalpool/evalpool/run"
)

var listeningOn = regexp.MustCompile(`dashboard: http://(\S+)/ `)

// dashboardCLI runs `evalpool dashboard ARGS` in-process. It returns the
// exit code at once when the command ends within a moment (a refusal), else
// the base URL it serves (on loopback, whatever it listens on) and its
// stderr; it stops when the test ends.
func dashboardCLI(t *testing.T, redisURL string, args ...string) (code int, base string, logs *evaltest.LogBuffer) {
	t.Helper()
	logs = &evaltest.LogBuffer{}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--redis", redisURL, "dashboard"}, args...), io.Discard, logs)
	}()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case code := <-done:
			cancel()
			return code, "", logs
		case <-deadline:
			cancel()
			t.Fatalf("the dashboard neither exited nor said where it listens: %s", lastLines(logs.String(), 5))
		case <-time.After(5 * time.Millisecond):
		}
		if m := listeningOn.FindStringSubmatch(logs.String()); m != nil {
			_, port, err := net.SplitHostPort(m[1])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cancel()
				if code := <-done; code != 0 {
					t.Errorf("dashboard exited %d: %s", code, lastLines(logs.String(), 5))
				}
			})
			return -1, "http://127.0.0.1:" + port, logs
		}
	}
}

func httpDo(t *testing.T, method, url, body string, headers ...string) (int, string) {
	t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Set(headers[i], headers[i+1])
	}
	resp, b := evaltest.Do(t, method, url, body, h)
	return resp.StatusCode, string(b)
}

// Without a token the dashboard serves on loopback only, unless
// --insecure-listen, and says it has no authentication; a token from
// --auth-token or EVALPOOL_AUTH_TOKEN guards every route but /healthz, and
// --help never shows it. (Not parallel: it sets the environment.)
func TestDashboardListenAndToken(t *testing.T) {
	url := evaltest.URL(t)
	const token = "cli-token-0123456789abcdef"
	t.Setenv("EVALPOOL_AUTH_TOKEN", "")
	for _, tc := range []struct {
		name   string
		env    string
		args   []string
		code   int    // -1: serves
		stderr string // says
		auth   bool
	}{
		{"all interfaces, no token", "", []string{"--listen", "0.0.0.0:0"}, exitUsage, "not a loopback address", false},
		{"empty host, no token", "", []string{"--listen", ":0"}, exitUsage, "not a loopback address", false},
		{"demo serve, no token", "", nil, exitUsage, "not a loopback address", false},
		{"loopback, no token", "", []string{"--listen", "127.0.0.1:0"}, -1, "WARNING: no --auth-token", false},
		{"localhost, no token", "", []string{"--listen", "localhost:0"}, -1, "WARNING: no --auth-token", false},
		{"insecure listen", "", []string{"--listen", "0.0.0.0:0", "--insecure-listen"}, -1, "WARNING: no --auth-token", false},
		{"token flag", "", []string{"--listen", "0.0.0.0:0", "--auth-token", token}, -1, "", true},
		{"token env", token, []string{"--listen", "0.0.0.0:0"}, -1, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("EVALPOOL_AUTH_TOKEN", tc.env)
			var code int
			var base string
			var logs *evaltest.LogBuffer
			if tc.name == "demo serve, no token" {
				var errb bytes.Buffer
				code = run(t.Context(), []string{"--redis", url, "demo", "--evals", "1", "--serve", ":0"}, io.Discard, &errb)
				logs = &evaltest.LogBuffer{}
				_, _ = logs.Write(errb.Bytes())
			} else {
				code, base, logs = dashboardCLI(t, url, tc.args...)
			}
			if code != tc.code || !strings.Contains(logs.String(), tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d saying %q", code, lastLines(logs.String(), 3), tc.code, tc.stderr)
			}
			if code != -1 {
				return
			}
			if got := strings.Contains(logs.String(), "WARNING"); got == tc.auth {
				t.Fatalf("with auth %v, stderr warns %v: %s", tc.auth, got, lastLines(logs.String(), 3))
			}
			if code, _ := httpDo(t, "GET", base+"/healthz", ""); code != 200 {
				t.Fatalf("/healthz: %d", code)
			}
			want := map[bool]int{true: 401, false: 200}[tc.auth]
			for _, path := range []string{"/api/pool", "/api/v1/runs", "/monitoring/"} {
				code, body := httpDo(t, "GET", base+path, "")
				if page := !strings.HasPrefix(path, "/api/"); page && tc.auth {
					// A page sends the browser to log in.
					if code != 200 || !strings.Contains(body, `name="token"`) {
						t.Fatalf("GET %s without a token: %d %.100q, want the login form", path, code, body)
					}
				} else if code != want {
					t.Fatalf("GET %s without a token: %d %.100q, want %d", path, code, body, want)
				}
				if code, body := httpDo(t, "GET", base+path, "", "Authorization", "Bearer "+token); code != 200 {
					t.Fatalf("GET %s with the token: %d %.100q", path, code, body)
				}
			}
			// Asynqmon is read-only without --admin.
			if code, _ := httpDo(t, "POST", base+"/monitoring/api/queues/evals:pause", "", "Authorization", "Bearer "+token); code != 403 {
				t.Fatalf("Asynqmon pause: %d, want 403", code)
			}
		})
	}
	t.Setenv("EVALPOOL_AUTH_TOKEN", token)
	var out bytes.Buffer
	if code := run(t.Context(), []string{"dashboard", "--help"}, &out, io.Discard); code != 0 || strings.Contains(out.String(), token) || !strings.Contains(out.String(), "--auth-token") {
		t.Fatalf("dashboard --help: exit %d, shows the token %v", code, strings.Contains(out.String(), token))
	}
}

// The API of `evalpool dashboard --auth-token` and the CLI see the same
// runs: a run submitted over HTTP, run by a worker, is summed up alike by
// both.
func TestAPIAndCLIAgree(t *testing.T) {
	t.Parallel()
	url := evaltest.StartT(t, evaltest.Options{}).URL()
	cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
	_, urls := startExecutors(t, 2, refexec.Options{Latency: time.Millisecond})
	if r := cli(append([]string{"pool", "add"}, urls...)...); r.code != 0 {
		t.Fatalf("pool add: %+v", r)
	}
	startWorker(t, url, "--concurrency", "4", "--poll-interval", "20ms", "--cleanup", "inline")
	const token = "agree-token-0123456789abcdef"
	_, base, _ := dashboardCLI(t, url, "--listen", "127.0.0.1:0", "--auth-token", token)
	bearer := []string{"Authorization", "Bearer " + token, "Content-Type", "application/json"}
	code, body := httpDo(t, "POST", base+"/api/v1/runs", `{"name":"via-api","evals":[
		{"eval_id":"a","spec":{"grade":"passed"}},{"eval_id":"b","spec":{"grade":"failed"}},{"eval_id":"c","spec":{"grade":"passed"}}]}`, bearer...)
	if code != 201 {
		t.Fatalf("submit: %d %s", code, body)
	}
	var api evalrun.Summary
	evaltest.Eventually(t, 30*time.Second, "the run never ended", func() bool {
		code, body := httpDo(t, "GET", base+"/api/v1/runs/via-api", "", bearer...)
		if code != 200 || json.Unmarshal([]byte(body), &api) != nil {
			t.Fatalf("summary: %d %s", code, body)
		}
		return api.Done() == 3
	})
	cliSum := runSummary(t, cli, "via-api")
	if api.Counts != cliSum.Counts || api.PassRate != cliSum.PassRate || api.Counts != (evalrun.Counts{Size: 3, Passed: 2, Failed: 1}) {
		t.Fatalf("API %+v, CLI %+v", api.Counts, cliSum.Counts)
	}
	// And the other way: the API refuses a name the CLI took.
	if r := cli("run", "submit", "--file", writeSuite(t, `{}`), "--name", "via-cli"); r.code != 0 {
		t.Fatalf("run submit: %+v", r)
	}
	if code, body := httpDo(t, "POST", base+"/api/v1/runs", `{"name":"via-cli","evals":[{"spec":{}}]}`, bearer...); code != 409 {
		t.Fatalf("a run name the CLI took: %d %s", code, body)
	}
}
