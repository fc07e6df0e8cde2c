package dashboard

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

// hostReq sends a request with the Host given ("" for the URL's) from the
// local address given ("" for any), headers as req's.
func hostReq(t *testing.T, from, method, target, host, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, err := http.NewRequestWithContext(t.Context(), method, target, rd)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		r.Host = host
	}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	if from != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	client := &http.Client{
		Transport:     &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
	resp, err := client.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func evalsQueued(t *testing.T, b *testBundle) int {
	t.Helper()
	q, err := asynq.NewInspectorFromRedisClient(b.client).GetQueueInfo(tasks.Queues(b.pool.Name()).Evals)
	if err != nil && strings.Contains(err.Error(), "does not exist") {
		return 0 // nothing was ever queued
	}
	if err != nil {
		t.Fatal(err)
	}
	return q.Size
}

// A DNS rebinding page reaches the dashboard under its own name, and sends
// an Origin of that name: the dashboard answers only the names it is
// reached by (loopback ones and Options.AllowedHosts), token or not; every
// route but /healthz.
func TestHostAllowList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		opts    Options
		headers []string
	}{
		{"no token", Options{}, nil},
		{"token as bearer", Options{AuthToken: testToken}, []string{"Authorization", "Bearer " + testToken}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, b := setupWith(t, tc.opts)
			port := b.url[strings.LastIndex(b.url, ":")+1:]
			for _, evil := range []string{"rebind.evil.example:" + port, "attacker.example:8080", "attacker.example", "127.0.0.1.nip.example:" + port} {
				origin := "http://" + evil
				for _, rt := range []struct{ method, path, body string }{
					{"POST", "/api/v1/evals", `{"eval_id":"rebound","spec":{}}`},
					{"GET", "/api/v1/runs", ""},
					{"POST", "/api/v1/runs/nightly/cancel", "{}"},
					{"GET", "/", ""},
					{"GET", "/api/pool", ""},
					{"GET", "/monitoring/", ""},
					{"GET", "/monitoring/api/queues", ""},
					{"GET", "/metrics", ""},
					{"GET", "/login", ""},
				} {
					resp, body := hostReq(t, "", rt.method, b.url+rt.path, evil, rt.body, append([]string{"Origin", origin, "Content-Type", "application/json"}, tc.headers...)...)
					if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "is not one this dashboard is reached by") {
						t.Errorf("%s %s with Host %s: %d %.120q, want 403", rt.method, rt.path, evil, resp.StatusCode, body)
					}
				}
			}
			if n := evalsQueued(t, b); n != 0 {
				t.Fatalf("%d evals queued by refused requests", n)
			}
			// Health checks pass under any name (a container's, a pod's IP).
			if resp, body := hostReq(t, "", "GET", b.url+"/healthz", "10.1.2.3:8080", ""); resp.StatusCode != 200 || body != "ok\n" {
				t.Errorf("/healthz by another name: %d %q", resp.StatusCode, body)
			}
			// Loopback names, on any port, are served.
			for _, host := range []string{"localhost:" + port, "LOCALHOST", "localhost.:8080", "127.0.0.1", "127.0.0.2:" + port, "[::1]:" + port, "[::1]"} {
				if resp, body := hostReq(t, "", "GET", b.url+"/api/v1/runs", host, "", tc.headers...); resp.StatusCode != 200 {
					t.Errorf("Host %s: %d %.120q, want 200", host, resp.StatusCode, body)
				}
			}
		})
	}
}

// Options.AllowedHosts: NAME on any port, NAME:PORT on that one, .NAME for
// NAME and under; a bad entry is refused by New.
func TestAllowedHosts(t *testing.T) {
	t.Parallel()
	d, b := setupWith(t, Options{AllowedHosts: []string{"dash.example.com", ".corp.example", "pinned.example:8443", "[fd00::1]", "10.0.0.5"}})
	for _, tc := range []struct {
		host string
		code int
	}{
		{"dash.example.com", 200},
		{"Dash.Example.COM.:9999", 200},
		{"evil.dash.example.com", 403},
		{"corp.example", 200},
		{"a.b.corp.example:8080", 200},
		{"evilcorp.example", 403},
		{"corp.example.evil", 403},
		{"pinned.example:8443", 200},
		{"pinned.example:8080", 403},
		{"pinned.example", 403}, // port 80
		{"[fd00::1]:8080", 200},
		{"10.0.0.5:8080", 200},
		{"10.0.0.6:8080", 403},
		{"", 403},
	} {
		r, _ := http.NewRequest("GET", b.url+"/api/v1/runs", nil)
		r.Host = tc.host
		if got := hostAllowed(d.hosts, r); got != (tc.code == 200) {
			t.Errorf("hostAllowed(%q) = %v", tc.host, got)
		}
		if tc.host == "" {
			continue // the client would send the URL's
		}
		if resp, body := hostReq(t, "", "GET", b.url+"/api/v1/runs", tc.host, ""); resp.StatusCode != tc.code {
			t.Errorf("Host %q: %d %.120q, want %d", tc.host, resp.StatusCode, body, tc.code)
		}
	}
	for _, bad := range []string{"", "*", "http://dash.example.com", "dash.example.com/x", ".corp.example:80", "x:http", ":8080", "a b"} {
		_, err := New(Options{Client: b.ep, Asynqmon: asynq.RedisClientOpt{Addr: "x"}, AllowedHosts: []string{bad}})
		if !errors.Is(err, ErrBadAllowedHost) || !strings.Contains(err.Error(), strconv.Quote(bad)) {
			t.Errorf("AllowedHosts %q: New: %v, want ErrBadAllowedHost naming it", bad, err)
		}
	}
}

// Every response the dashboard serves keeps it out of other sites' frames,
// Asynqmon's pages and refusals included.
func TestFrameHeaders(t *testing.T) {
	t.Parallel()
	_, b := setupWith(t, Options{AuthToken: testToken})
	bearer := []string{"Authorization", "Bearer " + testToken}
	for _, tc := range []struct {
		method, path, host string
		headers            []string
		code               int
	}{
		{"GET", "/", "", bearer, 200},
		{"GET", "/runs/nightly", "", bearer, 200},
		{"GET", "/monitoring/", "", bearer, 200},
		{"GET", "/monitoring/queues", "", bearer, 200},
		{"GET", "/monitoring/api/queues", "", bearer, 200},
		{"GET", "/api/pool", "", bearer, 200},
		{"GET", "/api/v1/runs", "", bearer, 200},
		{"GET", "/metrics", "", bearer, 200},
		{"GET", "/healthz", "", nil, 200},
		{"GET", "/login", "", nil, 200},
		{"GET", "/monitoring/", "", nil, http.StatusSeeOther},
		{"GET", "/monitoring/", "attacker.example", bearer, 403},
		{"GET", "/nothing", "", bearer, 404},
	} {
		resp, body := hostReq(t, "", tc.method, b.url+tc.path, tc.host, "", tc.headers...)
		framed := false
		for _, p := range resp.Header.Values("Content-Security-Policy") {
			framed = framed || strings.Contains(p, "frame-ancestors 'none'")
		}
		if resp.StatusCode != tc.code || resp.Header.Get("X-Frame-Options") != "DENY" || !framed {
			t.Errorf("%s %s: %d (want %d), X-Frame-Options %q, CSP %q: %.80q", tc.method, tc.path, resp.StatusCode, tc.code,
				resp.Header.Get("X-Frame-Options"), resp.Header.Values("Content-Security-Policy"), body)
		}
	}
}

// metric reads a counter of the dashboard's registry.
func metric(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// Wrong tokens, at /login or as a bearer, are limited per client and for
// all clients together, logged without the token given, and counted; past
// the limit even the right token is not looked at (a guess would tell).
func TestLoginLimits(t *testing.T) {
	t.Parallel()
	logger, logs := evaltest.Logger()
	reg := prometheus.NewRegistry()
	_, b := setupWith(t, Options{AuthToken: testToken, Logger: logger, Registry: reg})
	const formType = "application/x-www-form-urlencoded"
	login := func(from, token string) (*http.Response, string) {
		return hostReq(t, from, "POST", b.url+"/login", "", url.Values{"token": {token}}.Encode(), "Content-Type", formType, "Origin", b.url)
	}
	guess := func(i int) string { return fmt.Sprintf("guess-%04d", i) }
	for i := range FailedLoginBurst {
		if resp, body := login("127.0.0.1", guess(i)); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d %.100q, want 401", i, resp.StatusCode, body)
		}
	}
	for _, tc := range []struct {
		name string
		send func() (*http.Response, string)
	}{
		{"another guess", func() (*http.Response, string) { return login("127.0.0.1", guess(99)) }},
		{"the right token", func() (*http.Response, string) { return login("127.0.0.1", testToken) }},
		{"a bearer guess", func() (*http.Response, string) {
			return hostReq(t, "127.0.0.1", "GET", b.url+"/api/v1/runs", "", "", "Authorization", "Bearer "+guess(98))
		}},
		{"the right bearer", func() (*http.Response, string) {
			return hostReq(t, "127.0.0.1", "GET", b.url+"/api/v1/runs", "", "", "Authorization", "Bearer "+testToken)
		}},
	} {
		resp, body := tc.send()
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "Too many wrong tokens") || len(resp.Cookies()) != 0 {
			t.Errorf("%s past the limit: %d, Retry-After %q, cookies %v, %.100q; want 429", tc.name, resp.StatusCode, resp.Header.Get("Retry-After"), resp.Cookies(), body)
		}
	}
	// Another client is not limited by this one's guesses.
	if resp, body := login("127.0.0.2", testToken); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("the right token from another client: %d %.100q", resp.StatusCode, body)
	}
	if got := logs.Count("dashboard: wrong token"); got != FailedLoginBurst {
		t.Errorf("%d wrong tokens logged, want %d: %s", got, FailedLoginBurst, logs)
	}
	if strings.Contains(logs.String(), "guess-") || strings.Contains(logs.String(), testToken) {
		t.Errorf("a token given is in the log: %s", logs)
	}
	if got := metric(t, reg, "evalpool_dashboard_auth_failures_total", "wrong_token"); got != FailedLoginBurst {
		t.Errorf("wrong_token = %g, want %d", got, FailedLoginBurst)
	}
	if got := metric(t, reg, "evalpool_dashboard_auth_failures_total", "limited"); got != 4 {
		t.Errorf("limited = %g, want 4", got)
	}
}

// All clients together are limited too: guesses spread over addresses.
func TestLoginGlobalLimit(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{AuthToken: testToken}, func(d *Dashboard) {
		d.auth.limiter.globalBurst, d.auth.limiter.global.tokens, d.auth.limiter.globalEvery = 3, 3, time.Hour
	}, "http://e1:9001")
	for i, from := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"} {
		resp, _ := hostReq(t, from, "GET", b.url+"/api/v1/runs", "", "", "Authorization", "Bearer guess")
		if want := map[bool]int{true: 401, false: 429}[i < 3]; resp.StatusCode != want {
			t.Errorf("guess %d from %s: %d, want %d", i, from, resp.StatusCode, want)
		}
	}
}

// POST /logout, from the dashboard's pages only, clears the cookie and
// ends the session on the server: the cookie, kept, no longer works.
func TestLogout(t *testing.T) {
	t.Parallel()
	_, b := setupWith(t, Options{AuthToken: testToken})
	cookie := login(t, b.url)
	if resp, body := req(t, "GET", b.url+"/", "", "Cookie", cookie); resp.StatusCode != 200 || !strings.Contains(body, `action="logout"`) {
		t.Fatalf("/ with the cookie: %d, logout button: %v", resp.StatusCode, strings.Contains(body, `action="logout"`))
	}
	if _, body := req(t, "GET", b.url+"/runs/nightly", "", "Cookie", cookie); !strings.Contains(body, `action="../logout"`) {
		t.Fatalf("/runs/nightly has no logout button to ../logout")
	}
	for _, tc := range []struct {
		name    string
		headers []string
	}{
		{"cross-site form", []string{"Origin", "https://evil.example"}},
		{"cross-site fetch metadata", []string{"Sec-Fetch-Site", "cross-site"}},
		{"no origin at all", nil},
	} {
		if resp, body := req(t, "POST", b.url+"/logout", "", append(tc.headers, "Cookie", cookie)...); resp.StatusCode != http.StatusForbidden {
			t.Errorf("logout, %s: %d %.100q, want 403", tc.name, resp.StatusCode, body)
		}
	}
	if resp, _ := req(t, "GET", b.url+"/api/pool", "", "Cookie", cookie); resp.StatusCode != 200 {
		t.Fatalf("refused logouts ended the session: %d", resp.StatusCode)
	}
	resp, body := req(t, "POST", b.url+"/logout", "", "Cookie", cookie, "Origin", b.url)
	cleared := false
	for _, c := range resp.Cookies() {
		cleared = cleared || c.Name == SessionCookie && c.MaxAge < 0 && c.Value == ""
	}
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "./login" || !cleared {
		t.Fatalf("logout: %d %q, cookies %v: %.100q", resp.StatusCode, resp.Header.Get("Location"), resp.Header["Set-Cookie"], body)
	}
	for path, want := range map[string]int{"/api/pool": http.StatusUnauthorized, "/": http.StatusSeeOther, "/monitoring/": http.StatusSeeOther} {
		if resp, _ := req(t, "GET", b.url+path, "", "Cookie", cookie); resp.StatusCode != want {
			t.Errorf("GET %s with the cookie after logout: %d, want %d (a page sends the browser to log in)", path, resp.StatusCode, want)
		}
	}
	// Without a token there is no session, and no logout button.
	_, open := setup(t)
	if _, body := req(t, "GET", open.url+"/", ""); strings.Contains(body, `action="logout"`) {
		t.Errorf("a page without a token has a logout button")
	}
}

// countHKeys counts the pool reads (pool.Status reads the label sets
// first, with HKEYS) a client makes.
type countHKeys struct{ n atomic.Int64 }

func (c *countHKeys) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *countHKeys) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "hkeys" {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (c *countHKeys) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// concurrently sends n GETs at once and returns their codes and bodies.
func concurrently(t *testing.T, n int, target string) ([]int, []string) {
	t.Helper()
	codes, bodies := make([]int, n), make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			resp, err := http.Get(target)
			if err != nil {
				bodies[i] = err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			codes[i], bodies[i] = resp.StatusCode, string(b)
		})
	}
	close(start)
	wg.Wait()
	return codes, bodies
}

// /api/pool reads the whole pool: refused past PoolMaxExecutors, for the
// paged endpoint, and read once for requests that come together. Eight at
// once on a pool past the limit cost the dashboard next to nothing. (Not
// parallel: it weighs the process's allocations.)
func TestAPIPoolBounded(t *testing.T) {
	_, b := setup(t)
	for i := range PoolMaxExecutors {
		if _, err := b.pool.Register(t.Context(), pool.Executor{URL: fmt.Sprintf("http://x%05d:9001", i)}); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	codes, bodies := concurrently(t, 8, b.url+"/api/pool")
	runtime.ReadMemStats(&after)
	for i := range codes {
		if codes[i] != http.StatusUnprocessableEntity || !strings.Contains(bodies[i], "/api/pool/page?count=500") || !strings.Contains(bodies[i], fmt.Sprint(PoolMaxExecutors+3)) {
			t.Fatalf("/api/pool on %d executors: %d %.200q, want 422 pointing at /api/pool/page", PoolMaxExecutors+3, codes[i], bodies[i])
		}
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("8 requests for /api/pool on %d executors allocated %d KB", PoolMaxExecutors+3, alloc>>10)
	if alloc > 8<<20 {
		t.Errorf("8 requests for /api/pool allocated %d MB, want under 8", alloc>>20)
	}
	// The pages' endpoint serves it.
	if code, body := get(t, b.url+"/api/pool/page?count=500"); code != 200 || strings.Count(body, `"url"`) != 500 {
		t.Errorf("/api/pool/page: %d, %d executors", code, strings.Count(body, `"url"`))
	}
}

// Under the limit, requests that come together share one read.
func TestAPIPoolShared(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	reads := &countHKeys{}
	b.client.AddHook(reads)
	codes, bodies := concurrently(t, 8, b.url+"/api/pool")
	for i := range codes {
		if codes[i] != 200 || bodies[i] != bodies[0] || !strings.Contains(bodies[i], `"executors"`) {
			t.Fatalf("/api/pool: %d %.200q (first: %.200q)", codes[i], bodies[i], bodies[0])
		}
	}
	if n := reads.n.Load(); n != 1 {
		t.Errorf("8 requests for /api/pool read the pool %d times, want once", n)
	}
}

// serve serves a dashboard with d.Serve on a loopback port, until the test
// ends.
func serve(t *testing.T, opts Options) (*Dashboard, *testBundle, string) {
	t.Helper()
	d, b := setupWith(t, opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return d, b, l.Addr().String()
}

// dial opens a raw connection.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// closedWithin reports whether the server closes c (after whatever it
// answers) within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// raw sends a request on c and reads its answer's status.
func raw(t *testing.T, c net.Conn, request string) int {
	t.Helper()
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	_ = c.SetReadDeadline(time.Time{})
	return resp.StatusCode
}

// Connections that send nothing, or stall, are closed by the server's
// timeouts, and past Options.MaxConns the idle ones give way to new ones,
// those that never sent the token first: they cannot keep out a request
// with the token.
func TestServeBoundsConnections(t *testing.T) {
	t.Parallel()
	const max = 16
	reg := prometheus.NewRegistry()
	_, _, addr := serve(t, Options{AuthToken: testToken, Registry: reg, MaxConns: max,
		ReadHeaderTimeout: time.Second, ReadTimeout: 2 * time.Second, IdleTimeout: 30 * time.Second})
	get := "GET /api/v1/runs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + testToken + "\r\n\r\n"

	// A client with the token, kept alive: it outlives the idle ones.
	authed := dial(t, addr)
	if code := raw(t, authed, get); code != 200 {
		t.Fatalf("authenticated request: %d", code)
	}
	var idle []net.Conn
	for range 3 * max {
		idle = append(idle, dial(t, addr))
	}
	// One with the token, on a new connection, is served.
	if code := raw(t, dial(t, addr), get); code != 200 {
		t.Fatalf("authenticated request past %d idle connections: %d", 3*max, code)
	}
	if code := raw(t, authed, get); code != 200 {
		t.Fatalf("the kept-alive authenticated connection: %d", code)
	}
	if n := metric(t, reg, "evalpool_dashboard_connections_closed_total", "evicted"); n < 2*max {
		t.Errorf("evicted %g connections, want at least %d", n, 2*max)
	}
	// Those still open are closed by the header timeout.
	for i, c := range idle {
		if !closedWithin(c, 10*time.Second) {
			t.Fatalf("idle connection %d still open", i)
		}
	}
	// A body that stalls is cut at ReadTimeout.
	slow := dial(t, addr)
	if _, err := io.WriteString(slow, "POST /api/v1/evals HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "+testToken+
		"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"eval_id\":"); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(slow, 10*time.Second) {
		t.Fatal("a stalled body held its connection")
	}
}

// A kept-alive connection is closed after IdleTimeout; and when every
// connection is within a request, a new one is closed at once.
func TestServeIdleAndFull(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	d, _, addr := serve(t, Options{AuthToken: testToken, Registry: reg, MaxConns: 2,
		ReadHeaderTimeout: 30 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: time.Second})
	kept := dial(t, addr)
	if code := raw(t, kept, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if !closedWithin(kept, 10*time.Second) {
		t.Fatal("an idle kept-alive connection outlived IdleTimeout")
	}
	// Two stalled bodies: both connections are within a request.
	for range 2 {
		c := dial(t, addr)
		if _, err := io.WriteString(c, "POST /api/v1/evals HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "+testToken+
			"\r\nContent-Length: 1000\r\n\r\n{"); err != nil {
			t.Fatal(err)
		}
	}
	evaltest.Eventually(t, 10*time.Second, "both stalled bodies within their requests", func() bool {
		d.cap.mu.Lock()
		defer d.cap.mu.Unlock()
		busy := 0
		for _, e := range d.cap.conns {
			if e.busy {
				busy++
			}
		}
		return busy == 2
	})
	if c := dial(t, addr); !closedWithin(c, 5*time.Second) {
		t.Fatal("a connection past the cap, every other within a request, was kept")
	}
	if n := metric(t, reg, "evalpool_dashboard_connections_closed_total", "refused"); n != 1 {
		t.Fatalf("refused %g connections, want 1", n)
	}
}

// A followed stream outlives ReadTimeout: net/http lifts the deadline once
// the request is read, and the dashboard sets no write deadline.
func TestServeFollowOutlivesReadTimeout(t *testing.T) {
	t.Parallel()
	_, _, addr := serve(t, Options{ReadTimeout: 300 * time.Millisecond})
	c := dial(t, addr)
	const submit = `{"name":"long","evals":[{"eval_id":"a","spec":{}}]}`
	if code := raw(t, c, fmt.Sprintf("POST /api/v1/runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(submit), submit)); code != http.StatusCreated {
		t.Fatalf("submit: %d", code)
	}
	if _, err := io.WriteString(c, "GET /api/v1/runs/long/results?follow=1 HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("follow: %v, %v", resp, err)
	}
	// Nothing ends (no worker runs): ten times ReadTimeout later the
	// stream is still open.
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = resp.Body.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("the followed stream ended after ReadTimeout: %v", err)
	}
}

// A refused request's connection is closed at once, its body unread: a
// client that sends a large body slowly, without the token (or to a name
// the dashboard is not reached by, or to /login), holds no connection
// slot for the body's time, so that clients like it cannot keep out a
// request with the token.
func TestRefusedSlowBodiesHoldNoConnection(t *testing.T) {
	t.Parallel()
	const max = 4 // 2*max wrong tokens stay under the per-client limit
	for _, tc := range []struct{ name, head string }{
		{"no token", "POST /api/v1/evals HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"},
		{"wrong token", "POST /api/v1/evals HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer wrong-token-0123456789\r\nContent-Type: application/json\r\n"},
		{"foreign host", "POST /api/v1/evals HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer " + testToken + "\r\nContent-Type: application/json\r\n"},
		{"login form", "POST /login HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A dashboard each: wrong tokens would make the next case wait.
			_, _, addr := serve(t, Options{AuthToken: testToken, MaxConns: max,
				ReadHeaderTimeout: 30 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 30 * time.Second})
			var slow []net.Conn
			for range 2 * max {
				c := dial(t, addr)
				if _, err := io.WriteString(c, tc.head+"Content-Length: 100000\r\n\r\ntoken=x"); err != nil {
					t.Fatal(err)
				}
				slow = append(slow, c)
			}
			// Well under ReadTimeout (30 s), which held them before; the
			// login form's body gets loginBodyTimeout (5 s) first.
			for i, c := range slow {
				if !closedWithin(c, 15*time.Second) {
					t.Fatalf("slow body %d: its connection was still open 15 s after it was refused", i)
				}
			}
			get := "GET /api/v1/runs HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + testToken + "\r\n\r\n"
			if code := raw(t, dial(t, addr), get); code != 200 {
				t.Fatalf("a request with the token after %d slow refused bodies: %d", 2*max, code)
			}
		})
	}
}
