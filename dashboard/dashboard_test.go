package dashboard

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

func TestMain(m *testing.M) { evaltest.Main(m) }

type testBundle struct {
	client *redis.Client
	ep     *evalpool.Client
	pool   *pool.Pool
	url    string
}

// setup serves a dashboard over a Redis of its own (Asynqmon lists every
// queue of its Redis) with three executors registered.
func setup(t *testing.T) (*Dashboard, *testBundle) {
	t.Helper()
	return setupWith(t, Options{})
}

// setupWith is setup with the options given (Pool, Redis and Asynqmon are
// the test's).
func setupWith(t *testing.T, opts Options) (*Dashboard, *testBundle) {
	t.Helper()
	return setupTuned(t, opts, nil, "http://e1:9001", "http://e2:9001", "http://e3:9001")
}

// setupTuned is setupWith with the executors given registered, and tune,
// when not nil, called on the dashboard before it serves.
func setupTuned(t *testing.T, opts Options, tune func(*Dashboard), urls ...string) (*Dashboard, *testBundle) {
	t.Helper()
	srv := evaltest.StartT(t, evaltest.Options{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	ep, err := evalpool.NewClient(client, evalpool.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := ep.Pool("web")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range urls {
		if _, err := p.Register(t.Context(), pool.Executor{URL: u}); err != nil {
			t.Fatal(err)
		}
	}
	opts.Client, opts.Pool, opts.Asynqmon = ep, p.Name(), asynq.RedisClientOpt{Addr: srv.Addr}
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if tune != nil {
		tune(d)
	}
	ts := httptest.NewServer(d)
	t.Cleanup(ts.Close)
	return d, &testBundle{client: client, ep: ep, pool: p, url: ts.URL}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	l, err := b.pool.Acquire(t.Context(), "eval-7", time.Minute, pool.AcquireArgs{})
	if err != nil {
		t.Fatal(err)
	}

	code, body := get(t, b.url+"/api/pool")
	var v struct {
		Pool      string                `json:"pool"`
		Executors []pool.ExecutorStatus `json:"executors"`
		Monitor   string                `json:"monitoring_path"`
	}
	if err := json.Unmarshal([]byte(body), &v); code != 200 || err != nil || v.Pool != "web" || len(v.Executors) != 3 || v.Monitor != MonitoringPath {
		t.Fatalf("/api/pool: %d %s: %v", code, body, err)
	}
	leased := 0
	for _, e := range v.Executors {
		if e.State == pool.StateLeased && e.URL == l.URL && e.Lease.EvalID == "eval-7" {
			leased++
		}
	}
	if leased != 1 {
		t.Fatalf("/api/pool does not show the lease: %s", body)
	}

	if code, body := get(t, b.url+"/"); code != 200 || !strings.Contains(body, "api/pool") {
		t.Fatalf("/: %d", code)
	}
	if code, body := get(t, b.url+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, b.url+"/monitoring/"); code != 200 || !strings.Contains(body, "<div id=\"root\"") {
		t.Fatalf("/monitoring/: %d %.200s", code, body)
	}
	if code, body := get(t, b.url+"/monitoring/api/queues"); code != 200 || !strings.Contains(body, "queues") {
		t.Fatalf("/monitoring/api/queues: %d %.200s", code, body)
	}

	code, body = get(t, b.url+"/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if code != 200 || err != nil {
		t.Fatalf("/metrics: %d, %v", code, err)
	}
	got := map[string]float64{}
	for _, m := range families["evalpool_executors"].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "state" {
				got[lp.GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	// The states are exclusive: their sum is the registered total.
	sum := 0.0
	for _, v := range got {
		sum += v
	}
	registered := families["evalpool_executors_registered"].GetMetric()
	if got["available"] != 2 || got["leased"] != 1 || sum != 3 || len(registered) != 1 || registered[0].GetGauge().GetValue() != 3 {
		t.Fatalf("evalpool_executors = %v (sum %g), registered %v", got, sum, registered)
	}
}

// /api/pool carries, under the names index.html reads, each executor's
// labels, fails, graded results and quarantine, and the quarantined count.
func TestAPIPoolHealth(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	ctx := t.Context()
	const gpu = "http://gpu:9001"
	if _, err := b.pool.Register(ctx, pool.Executor{URL: gpu, Labels: map[string]string{"gpu": "a100"}}); err != nil {
		t.Fatal(err)
	}
	l, err := b.pool.Acquire(ctx, "graded", time.Minute, pool.AcquireArgs{Require: map[string]string{"gpu": "a100"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Release(ctx, l, pool.ReleaseArgs{Path: "test", Verdict: pool.VerdictPassed}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Quarantine(ctx, gpu, pool.ReasonOperator); err != nil {
		t.Fatal(err)
	}
	code, body := get(t, b.url+"/api/pool")
	var v struct {
		Counts    map[string]int   `json:"counts"`
		Executors []map[string]any `json:"executors"`
	}
	if err := json.Unmarshal([]byte(body), &v); code != 200 || err != nil {
		t.Fatalf("/api/pool: %d %s: %v", code, body, err)
	}
	if v.Counts["quarantined"] != 1 {
		t.Errorf("counts = %v, want 1 quarantined", v.Counts)
	}
	var e map[string]any
	for _, x := range v.Executors {
		if x["url"] == gpu {
			e = x
		}
	}
	q, _ := e["quarantine"].(map[string]any)
	ls, _ := e["labels"].(map[string]any)
	if e["state"] != "quarantined" || ls["gpu"] != "a100" || e["fails"] != 0.0 || e["passed"] != 1.0 || e["failed"] != 0.0 || q == nil {
		t.Fatalf("%s in /api/pool: %v", gpu, e)
	}
	for _, k := range []string{"since", "next_probe"} {
		if s, _ := q[k].(string); s == "" {
			t.Errorf("quarantine.%s = %v, want a time", k, q[k])
		} else if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			t.Errorf("quarantine.%s: %v", k, err)
		}
	}
	if q["reason"] != pool.ReasonOperator || q["probes"] != 0.0 {
		t.Errorf("quarantine = %v, want reason operator, 0 probes", q)
	}
}

// Redis gone: the API says so with a 503, the page stays up.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	_ = b.client.Close()
	if code, _ := get(t, b.url+"/api/pool"); code != http.StatusServiceUnavailable {
		t.Fatalf("/api/pool without Redis: %d, want 503", code)
	}
	if code, _ := get(t, b.url+"/"); code != 200 {
		t.Fatalf("/ without Redis: %d", code)
	}
}

func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"empty", Options{}, "Options.Client is required"},
		{"no asynqmon", Options{Client: b.ep}, "Options.Asynqmon is required"},
		{"token with spaces", Options{Client: b.ep, Asynqmon: asynq.RedisClientOpt{Addr: "x"}, AuthToken: " t "}, "AuthToken"},
		{"negative session", Options{Client: b.ep, Asynqmon: asynq.RedisClientOpt{Addr: "x"}, SessionTTL: -time.Second}, "SessionTTL"},
	} {
		if _, err := New(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New: %v, want %q", tc.name, err, tc.want)
		}
	}
}

const testToken = "test-token-0123456789abcdef"

// req sends a request with the headers given ("Cookie" and the rest as
// they are); it does not follow redirects.
func req(t *testing.T, method, url, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// login posts the token to /login from the dashboard's own page and
// returns the session cookie's header.
func login(t *testing.T, base string) string {
	t.Helper()
	resp, body := req(t, "POST", base+"/login", url.Values{"token": {testToken}, "next": {"/api/pool"}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded", "Origin", base)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "./api/pool" {
		t.Fatalf("login: %d %q %.200s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	for _, c := range resp.Cookies() {
		if c.Name == SessionCookie {
			if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Value == "" || strings.Contains(c.Value, testToken) {
				t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, not the token", c)
			}
			return c.Name + "=" + c.Value
		}
	}
	t.Fatalf("login set no session cookie: %v", resp.Header["Set-Cookie"])
	return ""
}

// With a token, every route but /healthz and the login page answers 401
// to a request without it or with a wrong one (a browser asking for a
// page is sent to the login page instead), and serves the right one.
func TestAuthRequired(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{AuthToken: testToken}, unlimited, "http://e1:9001")
	routes := []struct {
		method, path, body string
		code               int // with the right bearer
	}{
		{"GET", "/", "", 200},
		{"GET", "/api/pool", "", 200},
		{"GET", "/api/pool/page", "", 200},
		{"GET", "/api/pool/timeline?url=http://e1:9001", "", 200},
		{"GET", "/api/pool/waiters", "", 200},
		{"GET", "/runs", "", 200},
		{"GET", "/runs/nightly", "", 200},
		{"GET", "/evals/nightly/k1", "", 200},
		{"GET", "/monitoring/api/queues/evals:web/tasks/run%2Fk1", "", 404},
		{"GET", "/metrics", "", 200},
		{"GET", "/monitoring/", "", 200},
		{"GET", "/monitoring/api/queues", "", 200},
		{"GET", "/api/v1/runs", "", 200},
		{"GET", "/api/v1/openapi.json", "", 200},
		{"GET", "/api/v1/evals/nope", "", 404},
		{"POST", "/api/v1/evals", `{"eval_id":"e1","spec":{}}`, 201},
		{"GET", "/nothing", "", 404},
		{"HEAD", "/api/pool", "", 200},
	}
	for _, rt := range routes {
		for _, tc := range []struct {
			name    string
			headers []string
			code    int
		}{
			{"no token", nil, 401},
			{"wrong token", []string{"Authorization", "Bearer wrong-" + testToken}, 401},
			{"token prefix", []string{"Authorization", "Bearer " + testToken[:10]}, 401},
			{"basic scheme", []string{"Authorization", "Basic " + testToken}, 401},
			{"forged cookie", []string{"Cookie", SessionCookie + "=99999999999.00ff"}, 401},
			{"right token", []string{"Authorization", "Bearer " + testToken}, rt.code},
		} {
			// A browser (no Authorization) asking for a page is sent to
			// the login page instead.
			browser := (tc.name == "no token" || tc.name == "forged cookie") && (rt.method == "GET" || rt.method == "HEAD")
			page := !strings.Contains(rt.path, "/api/") && rt.path != "/metrics"
			want := tc.code
			if browser && page {
				want = http.StatusSeeOther
			}
			resp, body := req(t, rt.method, b.url+rt.path, rt.body, tc.headers...)
			if resp.StatusCode != want {
				t.Errorf("%s %s, %s: %d %.100q, want %d", rt.method, rt.path, tc.name, resp.StatusCode, body, want)
			}
			if want == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s, %s: 401 without WWW-Authenticate", rt.method, rt.path, tc.name)
			}
			if loc := resp.Header.Get("Location"); want == http.StatusSeeOther && !strings.Contains(loc, "login?next="+url.QueryEscape(rt.path)) {
				t.Errorf("%s %s, %s: sent to %q, want the login page", rt.method, rt.path, tc.name, loc)
			}
		}
	}
	// Open: /healthz, and the login form.
	if resp, body := req(t, "GET", b.url+"/healthz", ""); resp.StatusCode != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", resp.StatusCode, body)
	}
	if resp, body := req(t, "GET", b.url+"/login?next=/monitoring/", ""); resp.StatusCode != 200 || !strings.Contains(body, `name="token"`) || !strings.Contains(body, `value="/monitoring/"`) {
		t.Errorf("/login: %d %.300s", resp.StatusCode, body)
	}
	// A browser asking for a page is sent to log in, by a link relative to
	// the page (the dashboard may sit under a proxy's prefix); a program
	// with a wrong token is told why; the API answers in JSON.
	if resp, _ := req(t, "GET", b.url+"/monitoring/queues", ""); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "../login?next=%2Fmonitoring%2Fqueues" {
		t.Errorf("/monitoring/queues without a token: %d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, body := req(t, "GET", b.url+"/monitoring/queues", "", "Authorization", "Bearer wrong"); resp.StatusCode != 401 || !strings.Contains(body, "../login?next=%2Fmonitoring%2Fqueues") {
		t.Errorf("/monitoring/queues with a wrong token: %d %.300s", resp.StatusCode, body)
	}
	if resp, body := req(t, "GET", b.url+"/api/v1/runs", ""); resp.StatusCode != 401 || !strings.Contains(body, `"error":"authentication required`) {
		t.Errorf("/api/v1/runs without a token: %d %.300s", resp.StatusCode, body)
	}
}

// unlimited lifts the limits of wrong tokens, for tests that send many.
func unlimited(d *Dashboard) {
	d.auth.limiter.burst, d.auth.limiter.globalBurst = 1<<20, 1<<20
	d.auth.limiter.global.tokens = 1 << 20
}

// The login cookie: set by the right token posted from the dashboard's own
// page; good for reads; for writes only from the dashboard's own pages.
func TestLoginCookie(t *testing.T) {
	t.Parallel()
	d, b := setupWith(t, Options{AuthToken: testToken})
	form := func(token string) string { return url.Values{"token": {token}}.Encode() }
	const formType = "application/x-www-form-urlencoded"
	for _, tc := range []struct {
		name    string
		headers []string
		code    int
	}{
		{"wrong token", []string{"Origin", b.url}, 401},
		{"cross-site form", []string{"Origin", "https://evil.example"}, 403},
		{"cross-site fetch metadata", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"opaque origin", []string{"Origin", "null"}, 403},
		{"cross-site referer", []string{"Referer", "https://evil.example/x"}, 403},
		{"no origin at all", nil, 403},
	} {
		token := testToken
		if tc.name == "wrong token" {
			token = "wrong"
		}
		resp, body := req(t, "POST", b.url+"/login", form(token), append(tc.headers, "Content-Type", formType)...)
		if resp.StatusCode != tc.code || len(resp.Cookies()) != 0 {
			t.Errorf("login, %s: %d, cookies %v, %.100q; want %d and no cookie", tc.name, resp.StatusCode, resp.Cookies(), body, tc.code)
		}
	}
	cookie := login(t, b.url)
	for _, path := range []string{"/", "/api/pool", "/api/pool/page", "/runs", "/monitoring/", "/api/v1/runs", "/metrics"} {
		if resp, body := req(t, "GET", b.url+path, "", "Cookie", cookie); resp.StatusCode != 200 {
			t.Errorf("GET %s with the cookie: %d %.100q", path, resp.StatusCode, body)
		}
	}
	// A session of another dashboard, or one past its expiry, is no session.
	now := time.Now()
	for name, c := range map[string]string{
		"expired":           SessionCookie + "=" + d.auth.sessions.create(now.Add(-2*time.Hour), now.Add(-time.Hour)),
		"another dashboard": SessionCookie + "=" + newAuth(testToken, time.Hour).sessions.create(now, now.Add(time.Hour)),
		"tampered":          cookie[:len(cookie)-1] + map[bool]string{true: "0", false: "1"}[!strings.HasSuffix(cookie, "0")],
	} {
		if resp, _ := req(t, "GET", b.url+"/api/pool", "", "Cookie", c); resp.StatusCode != 401 {
			t.Errorf("%s session: %d, want 401", name, resp.StatusCode)
		}
	}

	// Writes with the cookie: refused unless they come from the dashboard.
	eval := func(id string) string { return `{"eval_id":"` + id + `","spec":{}}` }
	for i, tc := range []struct {
		name    string
		headers []string
		code    int
	}{
		{"cross-site form POST", []string{"Origin", "https://evil.example", "Content-Type", formType}, 403},
		{"cross-site fetch metadata", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"same-site, another origin", []string{"Sec-Fetch-Site", "same-site", "Origin", "http://sub." + strings.TrimPrefix(b.url, "http://")}, 403},
		{"cross-site referer", []string{"Referer", "https://evil.example/page"}, 403},
		{"no origin at all", nil, 403},
		{"same origin", []string{"Origin", b.url, "Sec-Fetch-Site", "same-origin"}, 201},
		{"same-origin referer", []string{"Referer", b.url + "/monitoring/"}, 201},
	} {
		resp, body := req(t, "POST", b.url+"/api/v1/evals", eval(fmt.Sprint("c", i)), append(tc.headers, "Cookie", cookie)...)
		if resp.StatusCode != tc.code {
			t.Errorf("POST with the cookie, %s: %d %.100q, want %d", tc.name, resp.StatusCode, body, tc.code)
		}
	}
	// The bearer token is no ambient credential: no origin check.
	if resp, body := req(t, "POST", b.url+"/api/v1/evals", eval("bearer"), "Authorization", "Bearer "+testToken, "Origin", "https://evil.example"); resp.StatusCode != 201 {
		t.Errorf("POST with the bearer: %d %.100q", resp.StatusCode, body)
	}
	// What was refused never reached the queue: c5, c6 and bearer did.
	q, err := asynq.NewInspectorFromRedisClient(b.client).GetQueueInfo(tasks.Queues(b.pool.Name()).Evals)
	if err != nil || q.Size != 3 {
		t.Fatalf("evals queue: %+v, %v; want 3", q, err)
	}
}

// Asynqmon changes nothing without Admin, whatever the credentials; with
// it, pausing a queue works (204) (by bearer, or cookie from the dashboard).
func TestAsynqmonReadOnly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		admin  bool
		cookie bool
		code   int
	}{
		{"bearer, read-only", false, false, 403},
		{"cookie, read-only", false, true, 403},
		{"bearer, admin", true, false, 204},
		{"cookie, admin", true, true, 204},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, b := setupWith(t, Options{AuthToken: testToken, Admin: tc.admin})
			queue := tasks.Queues(b.pool.Name()).Evals
			task, err := tasks.NewEval(tasks.Eval{ID: "e1", Pool: b.pool.Name(), Spec: json.RawMessage(`{}`)}, tasks.EvalOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := asynq.NewClientFromRedisClient(b.client).EnqueueContext(t.Context(), task); err != nil {
				t.Fatal(err)
			}
			creds := []string{"Authorization", "Bearer " + testToken}
			if tc.cookie {
				creds = []string{"Cookie", login(t, b.url), "Origin", b.url}
			}
			resp, body := req(t, "POST", b.url+"/monitoring/api/queues/"+queue+":pause", "", creds...)
			if resp.StatusCode != tc.code {
				t.Fatalf("pause: %d %.200q, want %d", resp.StatusCode, body, tc.code)
			}
			info, err := asynq.NewInspectorFromRedisClient(b.client).GetQueueInfo(queue)
			if err != nil || info.Paused != (tc.code == 204) {
				t.Fatalf("queue paused = %v (%v) after a %d", info.Paused, err, resp.StatusCode)
			}
			// Deleting a task is as refused (or not) as pausing.
			if resp, _ := req(t, "DELETE", b.url+"/monitoring/api/queues/"+queue+"/pending_tasks/e1", "", creds...); (resp.StatusCode == 403) != (tc.code == 403) {
				t.Fatalf("delete: %d", resp.StatusCode)
			}
			// Reads stay open to both.
			if resp, _ := req(t, "GET", b.url+"/monitoring/api/queues", "", creds...); resp.StatusCode != 200 {
				t.Fatalf("queues: %d", resp.StatusCode)
			}
		})
	}
}

// Without a token: no 401, but a write that names another origin is
// refused (a page the user visits cannot drive the dashboard), one that
// names none goes through (curl), and Asynqmon stays read-only.
func TestNoTokenCrossOrigin(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	for _, tc := range []struct {
		name    string
		path    string
		headers []string
		code    int
	}{
		{"cross-site", "/api/v1/evals", []string{"Origin", "https://evil.example", "Content-Type", "text/plain"}, 403},
		{"cross-site fetch metadata", "/api/v1/evals", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"cross-site referer", "/api/v1/evals", []string{"Referer", "https://evil.example/"}, 403},
		{"a program", "/api/v1/evals", nil, 201},
		{"same origin", "/api/v1/evals", []string{"Origin", b.url}, 200}, // the same eval again
		{"asynqmon", "/monitoring/api/queues/evals:pause", []string{"Origin", b.url}, 403},
		{"no login", "/login", []string{"Origin", b.url}, 404},
	} {
		resp, body := req(t, "POST", b.url+tc.path, `{"eval_id":"e1","spec":{}}`, tc.headers...)
		if resp.StatusCode != tc.code {
			t.Errorf("%s: %d %.100q, want %d", tc.name, resp.StatusCode, body, tc.code)
		}
	}
	if resp, _ := req(t, "GET", b.url+"/api/v1/runs", "", "Origin", "https://evil.example"); resp.StatusCode != 200 {
		t.Errorf("a read: %d", resp.StatusCode)
	}
}
