// Package dashboard serves what people look at: a live page of the pool's
// executors, a page a screen at a time with each executor's leases over the
// last minutes (/), the runs and how each went (/runs, /runs/NAME), two
// runs compared (/compare), an eval whole (/evals/ID), Asynqmon for the
// queues, the pool as JSON, Prometheus metrics, and the JSON API (package
// api, under /api/v1), from the Go binary alone (no Node build at run
// time).
//
// Cost: the pages poll, so what they poll stays cheap however large the
// pool, and however many tabs are open. The pool page reads a page of
// executors (/api/pool/page: pool.Pool.Page, O(page) plus the O(log N)
// counts) every second, their leases that ended over the window
// (/api/pool/timeline: one bounded read of the pool's lease history, shared
// by every tab for historyTTL) every few seconds, and the evals waiting for
// an executor (/api/pool/waiters) only when the counts say there are some,
// every few seconds, from one read shared by every tab, and not at all for
// pools over WaitersMaxExecutors (that list has no API but pool.Status,
// which reads the whole pool). The run page polls the run's O(1) progress
// and reads its summary (O(run)) only when an eval ended, at most every few
// seconds, and the page of ended evals it shows (/api/v1/runs/NAME/evals:
// at most 1,000 records, whatever the run) only when the progress changed,
// at most every few seconds; its histograms and groups come with the
// summary, and the runs list's mean scores and suite trends with its O(1)
// reads of 50 runs. The eval page reads GET /api/v1/evals/ID every
// 2 seconds until the eval ended: O(1), its task and, for a run's eval, its
// record. The compare page (/compare?base=RUN&head=RUN) reads GET
// /api/v1/runs/HEAD/compare once, not polled: O(size of both runs).
// /api/pool still reads the whole pool, for programs (the pages no longer
// poll it): at most PoolMaxExecutors, once per second for every request.
//
// Names (Options.AllowedHosts): every route but /healthz answers only a
// Host the dashboard is reached by, loopback names always, else 403, token
// or not: a DNS rebinding page sends its own name as Host and as Origin.
//
// Authentication (Options.AuthToken): when a token is set, every route but
// /healthz and the login page needs it, as "Authorization: Bearer TOKEN"
// (for programs: the API, Prometheus) or as the session cookie that
// POST /login sets for the right token (for browsers: HttpOnly,
// SameSite=Strict, valid for SessionTTL, a random session ID held in
// memory: POST /logout ends it, a restart ends them all). Tokens are
// compared in constant time; wrong ones are logged, counted and limited
// (FailedLoginBurst and the rest). Without it: 401, but a browser asking
// for a page (a GET with no Authorization header) is sent to the login
// page (303), which a headless screenshot lands on too.
//
// Every response carries X-Frame-Options: DENY and CSP frame-ancestors
// 'none' (Asynqmon's too). Serve adds the server's bounds: timeouts and a
// connection cap that idle connections cannot fill.
//
// Cross-site requests: a request that changes anything (any method but GET
// and HEAD, Asynqmon's API, POST /login and POST /logout included) authenticated by the
// cookie must come from the dashboard's own pages: Sec-Fetch-Site, Origin,
// or failing those Referer, must name the request's Host; with none of
// them it is refused too (403). A bearer token is never sent by a browser
// on its own, so it needs no such check. Without a token, a request that
// names another origin is refused the same way, and one naming none (curl,
// scripts) is let through. A reverse proxy must pass the Host header on.
//
// Asynqmon is read-only (its UI shows no actions; its API refuses anything
// but GET and HEAD with 403) unless Options.Admin is set. The pool page's
// actions (POST /api/pool/action: quarantine, return, remove) need
// Options.Admin and a token both.
package dashboard

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynq/x/metrics"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool"
	"github.com/evalpool/evalpool/api"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/tasks"
)

//go:embed index.html
var indexHTML []byte

//go:embed runs.html
var runsHTML []byte

//go:embed eval.html
var evalHTML []byte

//go:embed compare.html
var compareHTML []byte

//go:embed common.js
var commonJS []byte

// withCommon is a page with common.js in its script, where it says
// /*common.js*/: one copy of the helpers the pages share, hashed with the
// page's script by its CSP.
func withCommon(html []byte) []byte { return bytes.Replace(html, []byte("/*common.js*/"), commonJS, 1) }

// MonitoringPath is where Asynqmon is mounted.
const MonitoringPath = "/monitoring"

// Options configure a dashboard.
type Options struct {
	// Client reads the pool, the queues and the runs, and serves the API.
	// Required.
	Client *evalpool.Client
	// Pool names the pool the page shows, and the API's. Defaults to
	// pool.DefaultName.
	Pool string
	// Asynqmon connects Asynqmon to Redis. It gets a connection of its own
	// because Asynqmon closes it when the dashboard closes. Required.
	Asynqmon asynq.RedisConnOpt
	// Registry collects the metrics served at /metrics; the dashboard adds
	// the pool's state gauges and Asynq's queue metrics to it. Defaults to a
	// new registry.
	Registry *prometheus.Registry
	// Logger receives request errors. Defaults to discarding.
	Logger *zerolog.Logger
	// AuthToken, when set, is what every route but /healthz and /login
	// requires (see the package doc). Empty: no authentication; then only
	// serve on loopback (the CLI refuses anything else unless told).
	AuthToken string
	// SessionTTL is how long a login lasts. Defaults to DefaultSessionTTL.
	SessionTTL time.Duration
	// Admin lets Asynqmon change queues and tasks (pause, delete, run,
	// archive, cancel). Without it Asynqmon is read-only.
	Admin bool
	// MaxBodyBytes bounds an API request's body (api.Options.MaxBodyBytes).
	// Defaults to the API's 32 MiB.
	MaxBodyBytes int64
	// AllowedHosts are the names the dashboard is reached by (the Host
	// header), besides the loopback ones it always answers to (localhost,
	// 127.0.0.0/8, [::1], on any port): "NAME" on any port, "NAME:PORT" on
	// that port only, ".NAME" for NAME and every name under it. A request
	// to any other name is refused (403), token or not, but for /healthz:
	// it is what a DNS rebinding page sends. Empty: loopback names only.
	AllowedHosts []string

	// ReadHeaderTimeout bounds reading a request's header, a connection's
	// first included (Serve). Defaults to DefaultReadHeaderTimeout (10 s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, its body included
	// (Serve); net/http lifts it once the request is read, so a response
	// may stream for as long as it takes (the API's followed results).
	// Defaults to DefaultReadTimeout (60 s).
	ReadTimeout time.Duration
	// IdleTimeout bounds how long a kept-alive connection waits for its
	// next request (Serve). Defaults to DefaultIdleTimeout (30 s).
	IdleTimeout time.Duration
	// MaxConns caps the connections open at once (Serve). Defaults to
	// DefaultMaxConns (1,024), or a third of the process's descriptor limit
	// when that is lower.
	MaxConns int
}

// DefaultSessionTTL is Options.SessionTTL's default.
const DefaultSessionTTL = 12 * time.Hour

func (o *Options) validate() error {
	switch {
	case o.Client == nil:
		return errors.New("dashboard: Options.Client is required")
	case o.Asynqmon == nil:
		return errors.New("dashboard: Options.Asynqmon is required")
	case o.SessionTTL < 0:
		return errors.New("dashboard: Options.SessionTTL may not be negative")
	case strings.TrimSpace(o.AuthToken) != o.AuthToken:
		return errors.New("dashboard: Options.AuthToken may not start or end with spaces")
	case o.ReadHeaderTimeout < 0, o.ReadTimeout < 0, o.IdleTimeout < 0:
		return errors.New("dashboard: Options.ReadHeaderTimeout, ReadTimeout and IdleTimeout may not be negative")
	case o.MaxConns < 0:
		return errors.New("dashboard: Options.MaxConns may not be negative")
	}
	for _, h := range o.AllowedHosts {
		if _, err := parseHostRule(h); err != nil {
			return err
		}
	}
	return nil
}

// Dashboard is an http.Handler for the pool page (/), the runs pages
// (/runs, /runs/NAME), the eval page (/evals/ID), what the pool page reads
// (/api/pool/page, /api/pool/timeline, /api/pool/waiters), /api/pool, the
// API (/api/v1/), /monitoring/ (Asynqmon), /metrics, /healthz, and /login
// and /logout when it has a token.
type Dashboard struct {
	opts Options
	log  zerolog.Logger
	mux  *http.ServeMux
	mon  *asynqmon.HTTPHandler
	pool *pool.Pool
	auth *auth // nil without a token
	// hosts are Options.AllowedHosts, parsed.
	hosts []hostRule

	srvMu       sync.Mutex
	srv         *http.Server // of Serve
	cap         *connCap     // of Serve
	connsClosed *prometheus.CounterVec

	// The reads the pages' polls share (see the package doc); tests
	// change the limits.
	historyLimit int
	historyTTL   time.Duration
	historyMu    sync.Mutex
	history      map[int]*historyRead // by the window's minutes
	waitersMax   int64
	waitersTTL   time.Duration
	waitersMu    sync.Mutex
	waiters      *waitersRead
	poolMax      int64
	poolTTL      time.Duration
	poolMu       sync.Mutex
	poolRead     *poolRead
}

// New builds a dashboard. Close it to release Asynqmon's connection.
func New(opts Options) (*Dashboard, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.SessionTTL == 0 {
		opts.SessionTTL = DefaultSessionTTL
	}
	if opts.ReadHeaderTimeout == 0 {
		opts.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if opts.ReadTimeout == 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = defaultMaxConns()
	}
	d := &Dashboard{opts: opts, log: zerolog.Nop(), mux: http.NewServeMux(),
		historyLimit: TimelineHistoryLimit, historyTTL: historyTTL, history: map[int]*historyRead{},
		waitersMax: WaitersMaxExecutors, waitersTTL: waitersTTL, poolMax: PoolMaxExecutors, poolTTL: poolTTL}
	if opts.Logger != nil {
		d.log = *opts.Logger
	}
	for _, h := range opts.AllowedHosts {
		rule, _ := parseHostRule(h) // validated
		d.hosts = append(d.hosts, rule)
	}
	d.connsClosed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "evalpool_dashboard_connections_closed_total",
		Help: "Connections the dashboard closed past Options.MaxConns: evicted (an idle one, for a new one) or refused (the new one: every other was within a request).",
	}, []string{"reason"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "evalpool_dashboard_auth_failures_total",
		Help: "Token checks that failed: wrong_token (a wrong token at /login or as a bearer) or limited (refused unchecked: too many wrong tokens).",
	}, []string{"reason"})
	for _, c := range []*prometheus.CounterVec{d.connsClosed, failures} {
		if err := opts.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	if opts.AuthToken != "" {
		d.auth = newAuth(opts.AuthToken, opts.SessionTTL)
		d.auth.log, d.auth.failures = &d.log, failures
	}
	apiHandler, err := api.New(api.Options{Client: opts.Client, Pool: opts.Pool, Logger: opts.Logger, MaxBodyBytes: opts.MaxBodyBytes})
	if err != nil {
		return nil, err
	}
	if d.pool, err = opts.Client.Pool(opts.Pool); err != nil {
		return nil, err
	}
	if err := opts.Registry.Register(pool.NewStateCollector(d.pool)); err != nil {
		return nil, err
	}
	if err := opts.Registry.Register(metrics.NewQueueMetricsCollector(opts.Client.Inspector())); err != nil {
		return nil, err
	}
	_ = opts.Registry.Register(collectors.NewGoCollector())
	d.mon = asynqmon.New(asynqmon.Options{RootPath: MonitoringPath, RedisConnOpt: opts.Asynqmon, ReadOnly: !opts.Admin})
	d.mux.Handle(MonitoringPath+"/", d.mon)
	d.mux.HandleFunc("GET "+MonitoringPath+"/api/queues/{qname}/tasks/{id...}", d.asynqmonTask)
	d.mux.Handle(api.Prefix+"/", apiHandler)
	d.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	d.mux.HandleFunc("GET /api/pool", d.apiPool)
	d.mux.HandleFunc("GET /api/pool/page", d.apiPoolPage)
	d.mux.HandleFunc("GET /api/pool/timeline", d.apiPoolTimeline)
	d.mux.HandleFunc("GET /api/pool/waiters", d.apiPoolWaiters)
	d.mux.HandleFunc("POST /api/pool/action", d.apiPoolAction)
	d.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	d.mux.HandleFunc("GET /{$}", page(indexHTML, d.auth != nil))
	d.mux.HandleFunc("GET /runs", page(runsHTML, d.auth != nil))
	d.mux.HandleFunc("GET /runs/{name}", page(runsHTML, d.auth != nil))
	d.mux.HandleFunc("GET /compare", page(compareHTML, d.auth != nil))
	d.mux.HandleFunc("GET /evals/{id...}", page(evalHTML, d.auth != nil)) // a run's eval ID is NAME/KEY
	if d.auth != nil {
		d.mux.HandleFunc("GET /login", d.auth.loginPage)
		d.mux.HandleFunc("POST /login", d.auth.login)
		d.mux.HandleFunc("POST /logout", d.auth.logout)
	}
	return d, nil
}

// ServeHTTP implements http.Handler: the checks of the package doc, then
// the routes.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w = &frameGuard{ResponseWriter: w}
	unsafe := r.Method != http.MethodGet && r.Method != http.MethodHead
	if r.URL.Path == "/healthz" {
		d.mux.ServeHTTP(w, r) // for health checks, by whatever name they use
		return
	}
	if !hostAllowed(d.hosts, r) {
		refuse(w, r, http.StatusForbidden, fmt.Sprintf("host %q is not one this dashboard is reached by: add it to --allowed-hosts (EVALPOOL_ALLOWED_HOSTS)", r.Host))
		return
	}
	switch {
	case d.auth == nil:
		if unsafe && !sameOrigin(r, false) {
			refuse(w, r, http.StatusForbidden, "cross-origin request refused")
			return
		}
	case r.URL.Path == "/login" || r.URL.Path == "/logout":
		// Logging in from another site's form is refused too (login CSRF),
		// and so is logging out.
		if unsafe && !sameOrigin(r, true) {
			refuse(w, r, http.StatusForbidden, "cross-origin request refused: log in and out from the dashboard's own pages")
			return
		}
	default:
		switch d.auth.check(w, r) {
		case byBearer:
			d.authenticated(r)
		case byCookie:
			if unsafe && !sameOrigin(r, true) {
				refuse(w, r, http.StatusForbidden, "cross-origin request refused: a request that changes anything must come from the dashboard's pages, or carry the token as a bearer")
				return
			}
			d.authenticated(r)
		case limited:
			return // answered
		default:
			d.auth.unauthorized(w, r)
			return
		}
	}
	if unsafe && !d.opts.Admin && d.toAsynqmon(r) {
		refuse(w, r, http.StatusForbidden, "Asynqmon is read-only: start the dashboard with --admin to change queues and tasks")
		return
	}
	d.mux.ServeHTTP(w, r)
}

// authenticated marks the request's connection as one that sent the token
// (see Serve).
func (d *Dashboard) authenticated(r *http.Request) {
	d.srvMu.Lock()
	c := d.cap
	d.srvMu.Unlock()
	if c != nil {
		c.authenticated(r)
	}
}

// toAsynqmon reports whether the request goes to Asynqmon.
func (d *Dashboard) toAsynqmon(r *http.Request) bool {
	if strings.HasPrefix(r.URL.Path, MonitoringPath+"/") {
		return true
	}
	_, pattern := d.mux.Handler(r)
	return pattern == MonitoringPath+"/"
}

// hangUp, called before a refusal is written, ends the request's
// connection once the answer is sent, without reading what is left of its
// body: net/http would read up to 256 KiB of it first, as slowly as the
// client sends, and a client with no token would hold a connection slot
// that long.
func hangUp(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}

// refuse answers an error: JSON for the APIs, text for the rest.
func refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	hangUp(w) // a refused client keeps no connection
	if wantsJSON(r) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(struct {
			Error string `json:"error"`
		}{msg})
		return
	}
	http.Error(w, msg, status)
}

// wantsJSON reports whether the request is to an API (ours or Asynqmon's).
func wantsJSON(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/api/") || strings.HasPrefix(r.URL.Path, MonitoringPath+"/api/")
}

// Close releases Asynqmon's Redis connection.
func (d *Dashboard) Close() error { return d.mon.Close() }

// PoolView is the body of /api/pool: the pool's status, with where to find
// an eval's task in Asynqmon.
type PoolView struct {
	*pool.Status
	MonitoringPath string `json:"monitoring_path"`
}

// poolRead is one read of the whole pool, encoded, which every /api/pool
// asked for within poolTTL is answered from.
type poolRead struct {
	read time.Time // the dashboard's clock, for the TTL
	body []byte
}

// apiPool reads the whole pool (O(N)), for programs that read it (the
// pages poll /api/pool/page and the rest instead): for pools of at most
// PoolMaxExecutors, and once per poolTTL whatever the requests, so that the
// dashboard holds one read at a time. A larger pool is refused (422) with
// the way to the paged endpoint.
func (d *Dashboard) apiPool(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	counts, err := d.pool.Counts(ctx)
	if err != nil {
		d.unavailable(w, "pool counts", err)
		return
	}
	if counts.Registered > d.poolMax {
		d.poolTooLarge(w, r, counts.Registered)
		return
	}
	d.poolMu.Lock()
	defer d.poolMu.Unlock()
	if rd := d.poolRead; rd != nil && time.Since(rd.read) < d.poolTTL {
		writeJSON(w, rd.body)
		return
	}
	st, err := d.pool.Status(ctx)
	if err != nil {
		d.unavailable(w, "pool status", err)
		return
	}
	if n := int64(len(st.Executors)); n > d.poolMax { // it grew since the counts
		d.poolTooLarge(w, r, n)
		return
	}
	body, err := json.Marshal(PoolView{Status: st, MonitoringPath: MonitoringPath})
	if err != nil {
		d.unavailable(w, "pool status", err)
		return
	}
	d.poolRead = &poolRead{read: time.Now(), body: append(body, '\n')}
	writeJSON(w, d.poolRead.body)
}

func (d *Dashboard) poolTooLarge(w http.ResponseWriter, r *http.Request, n int64) {
	refuse(w, r, http.StatusUnprocessableEntity, fmt.Sprintf(
		"the pool has %d executors: /api/pool reads at most %d; read it a page at a time at /api/pool/page?count=%d (then ?cursor=NEXT)",
		n, d.poolMax, MaxPageCount))
}

func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// page serves one of the dashboard's pages, with a Content-Security-Policy
// that runs the page's own inline scripts and no other, and lets it reach
// its own origin only: should a string from the APIs ever get into the
// page as markup, it could neither run nor send anything anywhere. With a
// token, the page's nav has a logout button.
func page(html []byte, logout bool) http.HandlerFunc {
	html = withCommon(html)
	csp := pageCSP(html)
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", csp)
		body := html
		if logout {
			action := toRoot(r) + "logout"
			body = bytes.Replace(html, []byte(logoutMarker), []byte(`<form method="post" action="`+action+`" class="logout"><button type="submit">Log out</button></form>`), 1)
		}
		_, _ = w.Write(body)
	}
}

// toRoot is the relative path from r's page to the dashboard's root, so
// that its links hold under a proxy's prefix: a "../" for each directory
// the browser sees, the path as sent (an eval ID's %2F is no directory).
func toRoot(r *http.Request) string {
	return strings.Repeat("../", strings.Count(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/"))
}

// logoutMarker is where a page takes its logout button.
const logoutMarker = "<!--logout-->"

var inlineScript = regexp.MustCompile(`(?s)<script>(.*?)</script>`)

// pageCSP is the policy of a page: its inline scripts by their hashes.
func pageCSP(html []byte) string {
	var scripts []string
	for _, m := range inlineScript.FindAllSubmatch(html, -1) {
		sum := sha256.Sum256(m[1])
		scripts = append(scripts, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	return "default-src 'none'; script-src " + strings.Join(scripts, " ") +
		"; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
}

// Limits of the pool page's endpoints.
const (
	// DefaultPageCount and MaxPageCount are /api/pool/page's ?count.
	DefaultPageCount = 50
	MaxPageCount     = 500
	// DefaultTimelineMinutes and MaxTimelineMinutes are
	// /api/pool/timeline's ?minutes; it takes at most MaxPageCount ?url.
	DefaultTimelineMinutes = 5
	MaxTimelineMinutes     = 60
	// TimelineHistoryLimit bounds the ended leases (of the whole pool) one
	// timeline read takes from the pool's history, newest first: about
	// 1 MB, a few milliseconds of Redis. When the window holds more, the
	// timeline is complete from the end of the oldest one read only
	// (TimelineView.CompleteFrom), and says so.
	TimelineHistoryLimit = 10000
	// WaitersMaxExecutors: for a pool of more executors, /api/pool/waiters
	// gives the waiters' count only. The list has no API but pool.Status,
	// which reads the whole pool in one MULTI (two seconds for 100,000
	// executors, Redis blocked all along).
	WaitersMaxExecutors = 5000
	// MaxWaitersShown bounds the waiters /api/pool/waiters lists, first in
	// line first.
	MaxWaitersShown = 100
	// PoolMaxExecutors: /api/pool refuses (422) a pool of more executors,
	// for /api/pool/page. It reads the whole pool in one MULTI (Redis
	// blocked all along) and answers about 250 bytes an executor: a pool
	// of 5,000 is about 1.3 MB, read at most once per second.
	PoolMaxExecutors = 5000
)

const (
	// historyTTL is how long a read of the lease history serves every
	// timeline asked for, of any page, in any tab.
	historyTTL = 2 * time.Second
	// waitersTTL is how long a read of the waiters serves every tab; it is
	// read again sooner (but not within waitersMinAge) when the count no
	// longer matches.
	waitersTTL    = 5 * time.Second
	waitersMinAge = 2 * time.Second
	// maxPageReads bounds the pool.Pool.Page calls that fill one page.
	maxPageReads = 8
	// poolTTL is how long a read of the whole pool answers every /api/pool.
	poolTTL = time.Second
)

// badRequest answers a 400 in JSON.
func badRequest(w http.ResponseWriter, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg})
}

// unavailable answers a 503 for an error of Redis.
func (d *Dashboard) unavailable(w http.ResponseWriter, what string, err error) {
	d.log.Error().Err(err).Msg("dashboard: " + what)
	http.Error(w, err.Error(), http.StatusServiceUnavailable)
}

func writeView(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// redisNow is Redis's clock, which the pool's times are of.
func (d *Dashboard) redisNow(ctx context.Context) (time.Time, error) {
	return d.opts.Client.Redis().Time(ctx).Result()
}

// PageView is the body of /api/pool/page: a page of the pool's executors,
// sorted by URL, with the counts of the whole pool.
type PageView struct {
	Pool string `json:"pool"`
	// Now is Redis's clock, which the leases' times are of.
	Now    time.Time   `json:"now"`
	Counts pool.Counts `json:"counts"`
	// Cursor is the page's; Next the next page's, "" after the last page.
	// Offset is how many executors the pages before this one showed.
	Cursor    string                `json:"cursor"`
	Next      string                `json:"next"`
	Offset    int                   `json:"offset"`
	Executors []pool.ExecutorStatus `json:"executors"`
	// MonitoringPath and EvalsQueue make an eval's link into Asynqmon.
	MonitoringPath string `json:"monitoring_path"`
	EvalsQueue     string `json:"evals_queue"`
	// Actions says the page may act on the executors (POST
	// /api/pool/action): with --admin and a token.
	Actions bool `json:"actions,omitempty"`
}

// pageCursor is where a page starts: in the batch Redis's HSCAN answers
// from cursor scan for the count hint, after its first skip executors
// (sorted by URL). HSCAN answers about as many as asked for, often more
// (and a small hash whole): a page of exactly count executors may end
// inside a batch, which the next page reads again and skips. offset is how
// many executors the pages before showed: HSCAN tells it has no more only
// once it looked, and a page that ends at a batch's end would be followed
// by an empty one; the pages end when they showed every registered
// executor. Spelled "SCAN.SKIP.HINT.OFFSET"; "" is the first page.
type pageCursor struct {
	scan               uint64
	skip, hint, offset int
}

func (c pageCursor) String() string {
	if c == (pageCursor{}) {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d.%d", c.scan, c.skip, c.hint, c.offset)
}

func parsePageCursor(s string) (pageCursor, error) {
	if s == "" {
		return pageCursor{}, nil
	}
	bad := fmt.Errorf("cursor %q: want the next of a page", s)
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return pageCursor{}, bad
	}
	scan, err := strconv.ParseUint(parts[0], 10, 64)
	if err != nil {
		return pageCursor{}, bad
	}
	c := pageCursor{scan: scan}
	for i, p := range []*int{&c.skip, &c.hint, &c.offset} {
		if *p, err = strconv.Atoi(parts[i+1]); err != nil || *p < 0 {
			return pageCursor{}, bad
		}
	}
	if c.hint < 1 || c.hint > MaxPageCount || c.skip > 100*MaxPageCount {
		return pageCursor{}, bad
	}
	return c, nil
}

// readPage reads count executors from cur on: one pool.Pool.Page, two
// when the page straddles two batches, never more than maxPageReads (a
// page may then be short). next is the zero cursor after the last page.
func (d *Dashboard) readPage(ctx context.Context, cur pageCursor, count int) (page []pool.ExecutorStatus, next pageCursor, counts pool.Counts, err error) {
	if cur.hint == 0 {
		cur.hint = count
	}
	offset := cur.offset
	defer func() {
		if next != (pageCursor{}) {
			next.offset = offset + len(page)
			if int64(next.offset) >= counts.Registered {
				next = pageCursor{}
			}
		}
	}()
	for range maxPageReads {
		batch, after, c, err := d.pool.Page(ctx, cur.scan, int64(cur.hint))
		if err != nil {
			return nil, pageCursor{}, pool.Counts{}, err
		}
		counts = c
		batch = batch[min(cur.skip, len(batch)):]
		if need := count - len(page); len(batch) > need {
			page = append(page, batch[:need]...)
			cur.skip += need
			return page, cur, counts, nil
		}
		page = append(page, batch...)
		if after == 0 {
			return page, pageCursor{}, counts, nil
		}
		cur = pageCursor{scan: after, hint: max(1, count-len(page))}
		if len(page) == count {
			cur.hint = count
			break
		}
	}
	return page, cur, counts, nil
}

func (d *Dashboard) apiPoolPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	count := DefaultPageCount
	if s := q.Get("count"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxPageCount {
			badRequest(w, fmt.Sprintf("count %q: want 1 to %d", s, MaxPageCount))
			return
		}
		count = n
	}
	cur, err := parsePageCursor(q.Get("cursor"))
	if err != nil {
		badRequest(w, err.Error())
		return
	}
	execs, next, counts, err := d.readPage(r.Context(), cur, count)
	if err != nil {
		d.unavailable(w, "pool page", err)
		return
	}
	now, err := d.redisNow(r.Context())
	if err != nil {
		d.unavailable(w, "pool page", err)
		return
	}
	slices.SortFunc(execs, func(a, b pool.ExecutorStatus) int { return strings.Compare(a.URL, b.URL) })
	if execs == nil {
		execs = []pool.ExecutorStatus{}
	}
	name := d.pool.Name()
	writeView(w, PageView{Pool: name, Now: now, Counts: counts, Cursor: cur.String(), Next: next.String(), Offset: cur.offset,
		Executors: execs, MonitoringPath: MonitoringPath, EvalsQueue: tasks.Queues(name).Evals, Actions: d.actions()})
}

// TimelineView is the body of /api/pool/timeline: the leases of the
// executors asked for that ended in the window (From to Now), newest first.
// Their running leases are on the page (ExecutorStatus.Lease).
type TimelineView struct {
	// Now is Redis's clock when the history was read (at most historyTTL
	// ago).
	Now  time.Time `json:"now"`
	From time.Time `json:"from"`
	// CompleteFrom is when Spans are complete from: From, unless the whole
	// pool ended more leases in the window than a read takes
	// (TimelineHistoryLimit); then the end of the oldest one read.
	CompleteFrom time.Time        `json:"complete_from"`
	Spans        []pool.LeaseSpan `json:"spans"`
}

// historyRead is one read of the lease history over a window, which every
// timeline asked for within historyTTL is cut from.
type historyRead struct {
	read      time.Time // the dashboard's clock, for the TTL
	now, from time.Time
	complete  time.Time
	spans     []pool.LeaseSpan
}

// leaseHistory reads the leases of the whole pool that ended in the last
// minutes, or returns the read of another request made within historyTTL.
// It reads the whole history (bounded) rather than pool.Pool.History's
// filter by URL, which reads as much and drops the rest in the client, so
// that one read serves every page and tab, and tells when it was cut.
func (d *Dashboard) leaseHistory(ctx context.Context, minutes int) (*historyRead, error) {
	d.historyMu.Lock()
	defer d.historyMu.Unlock()
	if h := d.history[minutes]; h != nil && time.Since(h.read) < d.historyTTL {
		return h, nil
	}
	now, err := d.redisNow(ctx)
	if err != nil {
		return nil, err
	}
	from := now.Add(-time.Duration(minutes) * time.Minute)
	spans, err := d.pool.History(ctx, from, d.historyLimit)
	if err != nil {
		return nil, err
	}
	h := &historyRead{read: time.Now(), now: now, from: from, complete: from, spans: spans}
	if len(spans) >= d.historyLimit {
		h.complete = spans[len(spans)-1].To
	}
	for m, old := range d.history {
		if time.Since(old.read) >= d.historyTTL {
			delete(d.history, m) // keep no stale read of another window
		}
	}
	d.history[minutes] = h
	return h, nil
}

func (d *Dashboard) apiPoolTimeline(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	minutes := DefaultTimelineMinutes
	if s := q.Get("minutes"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxTimelineMinutes {
			badRequest(w, fmt.Sprintf("minutes %q: want 1 to %d", s, MaxTimelineMinutes))
			return
		}
		minutes = n
	}
	urls := map[string]bool{}
	for _, u := range q["url"] {
		urls[u] = true
	}
	if len(urls) == 0 || len(urls) > MaxPageCount {
		badRequest(w, fmt.Sprintf("url: want 1 to %d executors (?url=A&url=B)", MaxPageCount))
		return
	}
	h, err := d.leaseHistory(r.Context(), minutes)
	if err != nil {
		d.unavailable(w, "lease history", err)
		return
	}
	v := TimelineView{Now: h.now, From: h.from, CompleteFrom: h.complete, Spans: []pool.LeaseSpan{}}
	for _, s := range h.spans {
		if urls[s.URL] {
			v.Spans = append(v.Spans, s)
		}
	}
	writeView(w, v)
}

// WaitersView is the body of /api/pool/waiters: the evals waiting for an
// executor, first in line first.
type WaitersView struct {
	// Count is how many there are: as read with Waiters when they are
	// listed, so that the two agree; else now (pool.Counts, O(log N)).
	Count int64 `json:"count"`
	// Waiters are the first MaxWaitersShown of them, as read at ReadAt (at
	// most waitersTTL ago): empty when Count is 0 or Skipped says why.
	Waiters []pool.WaiterStatus `json:"waiters"`
	ReadAt  time.Time           `json:"read_at,omitzero"`
	Skipped string              `json:"skipped,omitempty"`
}

// waitersRead is one read of the waiters, which every tab is served from
// within waitersTTL.
type waitersRead struct {
	read    time.Time // the dashboard's clock, for the TTL
	now     time.Time // Redis's
	waiters []pool.WaiterStatus
}

// apiPoolWaiters lists the waiters without reading the whole pool more than
// once per waitersTTL (waitersMinAge when the count changed), whatever the
// tabs open, and not at all while none wait or for a pool of more than
// WaitersMaxExecutors: pool.Status is the only way to the list, and it is
// O(N). (A bounded read of the wait line, in package pool, would lift
// this.)
func (d *Dashboard) apiPoolWaiters(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	counts, err := d.pool.Counts(ctx)
	if err != nil {
		d.unavailable(w, "pool counts", err)
		return
	}
	v := WaitersView{Count: counts.Waiters, Waiters: []pool.WaiterStatus{}}
	switch {
	case counts.Waiters == 0:
	case counts.Registered > d.waitersMax:
		v.Skipped = fmt.Sprintf("not listed for a pool of more than %d executors: the list is read with the whole pool", d.waitersMax)
	default:
		rd, err := d.readWaiters(ctx, counts.Waiters)
		if err != nil {
			d.unavailable(w, "pool waiters", err)
			return
		}
		v.ReadAt, v.Count = rd.now, int64(len(rd.waiters))
		v.Waiters = rd.waiters[:min(len(rd.waiters), MaxWaitersShown)]
	}
	writeView(w, v)
}

func (d *Dashboard) readWaiters(ctx context.Context, count int64) (*waitersRead, error) {
	d.waitersMu.Lock()
	defer d.waitersMu.Unlock()
	if rd := d.waiters; rd != nil {
		age := time.Since(rd.read)
		if age < d.waitersTTL && (int64(len(rd.waiters)) == count || age < min(waitersMinAge, d.waitersTTL)) {
			return rd, nil
		}
	}
	st, err := d.pool.Status(ctx)
	if err != nil {
		return nil, err
	}
	rd := &waitersRead{read: time.Now(), now: st.Now, waiters: st.Waiters}
	if rd.waiters == nil {
		rd.waiters = []pool.WaiterStatus{}
	}
	d.waiters = rd
	return rd, nil
}

// asynqmonTask answers Asynqmon's task API (GET
// /api/queues/{qname}/tasks/{task_id}, which its task page reads) for the
// task IDs Asynqmon's router cannot route: an eval of a run is NAME/KEY,
// and Asynqmon matches {task_id} against the unescaped path, where the
// escaped slash is a slash again, so its task page would find no such
// task. The answer is Asynqmon's, with its default formatters (payload and
// result as text when printable). Any other ID goes to Asynqmon.
func (d *Dashboard) asynqmonTask(w http.ResponseWriter, r *http.Request) {
	qname, id := r.PathValue("qname"), r.PathValue("id")
	if !strings.Contains(id, "/") {
		d.mon.ServeHTTP(w, r)
		return
	}
	info, err := d.opts.Client.Inspector().GetTaskInfo(qname, id)
	switch {
	case errors.Is(err, asynq.ErrQueueNotFound), errors.Is(err, asynq.ErrTaskNotFound):
		http.Error(w, strings.TrimPrefix(err.Error(), "asynq: "), http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, strings.TrimPrefix(err.Error(), "asynq: "), http.StatusInternalServerError)
		return
	}
	rfc := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format(time.RFC3339)
	}
	var ttl int64
	if info.State == asynq.TaskStateCompleted {
		ttl = int64(time.Until(info.CompletedAt.Add(info.Retention)).Seconds())
	}
	writeView(w, asynqmonTaskInfo{
		ID: info.ID, Queue: info.Queue, Type: info.Type, Payload: printable(info.Payload), State: info.State.String(),
		MaxRetry: info.MaxRetry, Retried: info.Retried, LastErr: info.LastErr, LastFailedAt: rfc(info.LastFailedAt),
		Timeout: int(info.Timeout.Seconds()), Deadline: rfc(info.Deadline), NextProcessAt: rfc(info.NextProcessAt),
		CompletedAt: rfc(info.CompletedAt), Result: printable(info.Result), TTL: ttl,
	})
}

// asynqmonTaskInfo is Asynqmon's JSON of a task.
type asynqmonTaskInfo struct {
	ID            string `json:"id"`
	Queue         string `json:"queue"`
	Type          string `json:"type"`
	Payload       string `json:"payload"`
	State         string `json:"state"`
	MaxRetry      int    `json:"max_retry"`
	Retried       int    `json:"retried"`
	LastErr       string `json:"error_message"`
	LastFailedAt  string `json:"last_failed_at"`
	Timeout       int    `json:"timeout_seconds"`
	Deadline      string `json:"deadline"`
	NextProcessAt string `json:"next_process_at"`
	CompletedAt   string `json:"completed_at"`
	Result        string `json:"result"`
	TTL           int64  `json:"ttl_seconds"`
}

// printable is Asynqmon's default formatting of a payload or result: the
// bytes as text when they are printable and not all spaces.
func printable(b []byte) string {
	if !utf8.Valid(b) {
		return "non-printable bytes"
	}
	blank := true
	for _, r := range string(b) {
		if !unicode.IsPrint(r) {
			return "non-printable bytes"
		}
		if !unicode.IsSpace(r) {
			blank = false
		}
	}
	if blank {
		return "non-printable bytes"
	}
	return string(b)
}

// How a request was authenticated.
type authMethod int

const (
	unauthenticated authMethod = iota
	byBearer
	byCookie
	limited // refused (429), answered: too many wrong tokens
)

// SessionCookie is the name of the login cookie.
const SessionCookie = "evalpool_session"

// loginBodyTimeout bounds reading the login form, which a client not yet
// known sends.
const loginBodyTimeout = 5 * time.Second

// auth checks the token and the login cookie, whose value is a random
// session ID held in memory (sessions) until it expires or logs out.
type auth struct {
	tokenSum [sha256.Size]byte
	ttl      time.Duration
	now      func() time.Time
	sessions sessions
	limiter  *limiter
	log      *zerolog.Logger
	failures *prometheus.CounterVec
}

func newAuth(token string, ttl time.Duration) *auth {
	nop := zerolog.Nop()
	return &auth{
		tokenSum: sha256.Sum256([]byte(token)), ttl: ttl, now: time.Now,
		sessions: sessions{expiry: map[[sha256.Size]byte]time.Time{}},
		limiter:  newLimiter(time.Now()),
		log:      &nop,
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "unregistered"}, []string{"reason"}),
	}
}

// tokenOK compares a token given with ours in constant time (of their
// hashes, so that the length leaks nothing either).
func (a *auth) tokenOK(given string) bool {
	sum := sha256.Sum256([]byte(given))
	return subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) == 1
}

// checkToken compares the token a request carries, within the limits of
// failed checks (FailedLoginBurst and the rest): a wrong one is logged
// (without it) and counted. Past the limits the token is not looked at:
// retry says how long to wait, and the request is to be answered 429.
func (a *auth) checkToken(r *http.Request, given, via string) (right bool, retry time.Duration) {
	client := clientKey(r.RemoteAddr)
	ok, retry := a.limiter.take(a.now(), client)
	if !ok {
		a.failures.WithLabelValues("limited").Inc()
		return false, max(time.Second, retry.Round(time.Second))
	}
	if a.tokenOK(given) {
		a.limiter.refund(client)
		return true, 0
	}
	a.failures.WithLabelValues("wrong_token").Inc()
	a.log.Warn().Str("client", r.RemoteAddr).Str("via", via).Str("path", r.URL.Path).Msg("dashboard: wrong token")
	return false, 0
}

// tooMany sets the headers of a 429 and returns its line.
func tooMany(w http.ResponseWriter, retry time.Duration) string {
	w.Header().Set("Retry-After", strconv.Itoa(int(retry/time.Second)))
	return "Too many wrong tokens: try again in " + retry.String() + "."
}

// check says how the request is authenticated, if at all. A bearer
// header, when present, decides alone.
func (a *auth) check(w http.ResponseWriter, r *http.Request) authMethod {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") {
			return unauthenticated
		}
		switch right, retry := a.checkToken(r, strings.TrimSpace(token), "bearer"); {
		case retry > 0:
			refuse(w, r, http.StatusTooManyRequests, tooMany(w, retry))
			return limited
		case right:
			return byBearer
		}
		return unauthenticated
	}
	if c, err := r.Cookie(SessionCookie); err == nil && a.sessions.valid(a.now(), c.Value) {
		return byCookie
	}
	return unauthenticated
}

// unauthorized sends a browser asking for a page to the login page (303);
// anything else gets 401: JSON for the APIs, a page that leads to the
// login for the rest (a wrong bearer, a POST).
func (a *auth) unauthorized(w http.ResponseWriter, r *http.Request) {
	const msg = "authentication required: send Authorization: Bearer TOKEN, or log in at /login"
	page := !wantsJSON(r) && r.URL.Path != "/metrics"
	// The query goes back with the path: /evals/ID?pool=NAME is another eval
	// without it.
	login := toRoot(r) + "login?next=" + url.QueryEscape(r.URL.RequestURI())
	w.Header().Set("Cache-Control", "no-store")
	if page && (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.Header.Get("Authorization") == "" {
		// A browser: sent to the login page, which a headless one that
		// takes a screenshot lands on too (a 401's challenge stalls it).
		hangUp(w)
		w.Header().Set("Location", login) // as is: http.Redirect would make it absolute
		w.WriteHeader(http.StatusSeeOther)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="evalpool"`)
	if !page {
		refuse(w, r, http.StatusUnauthorized, msg)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	hangUp(w)
	w.WriteHeader(http.StatusUnauthorized)
	_ = unauthorizedPage.Execute(w, login)
}

var unauthorizedPage = template.Must(template.New("401").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>evalpool: log in</title>
<meta http-equiv="refresh" content="0; url={{.}}"></head>
<body><p>This dashboard needs its token: <a href="{{.}}">log in</a>.</p></body></html>
`))

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>evalpool: log in</title>
<style>body{font:15px system-ui,sans-serif;margin:4em auto;max-width:24em}input{font:inherit;padding:.3em;width:100%;box-sizing:border-box;margin:.4em 0}p.err{color:#b00}</style></head>
<body><h1>evalpool</h1>
{{if .Error}}<p class="err">{{.Error}}</p>{{end}}
<form method="post" action="login">
<input type="hidden" name="next" value="{{.Next}}">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required></label>
<input type="submit" value="Log in">
</form></body></html>
`))

type loginView struct{ Next, Error string }

func (a *auth) loginPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = loginPage.Execute(w, loginView{Next: localPath(r.URL.Query().Get("next"))})
}

// login sets the session cookie for the right token and goes on to the
// page asked for; a wrong token is 401 and the form again, and past the
// limits of wrong tokens 429 and the form.
func (a *auth) login(w http.ResponseWriter, r *http.Request) {
	// The form comes from a client not yet known: it gets loginBodyTimeout,
	// not the server's ReadTimeout, to send it.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(loginBodyTimeout))
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		hangUp(w)
		http.Error(w, "bad login form: "+err.Error(), http.StatusBadRequest)
		return
	}
	next := localPath(r.PostForm.Get("next"))
	w.Header().Set("Cache-Control", "no-store")
	form := func(status int, msg string) {
		hangUp(w)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		_ = loginPage.Execute(w, loginView{Next: next, Error: msg})
	}
	switch right, retry := a.checkToken(r, r.PostForm.Get("token"), "login"); {
	case retry > 0:
		form(http.StatusTooManyRequests, tooMany(w, retry))
		return
	case !right:
		form(http.StatusUnauthorized, "Wrong token.")
		return
	}
	now := a.now()
	http.SetCookie(w, &http.Cookie{
		Name:     SessionCookie,
		Value:    a.sessions.create(now, now.Add(a.ttl)),
		Path:     "/",
		MaxAge:   int(a.ttl / time.Second),
		HttpOnly: true,
		Secure:   r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https",
		SameSite: http.SameSiteStrictMode,
	})
	// Relative to /login (http.Redirect would make it absolute).
	w.Header().Set("Location", "./"+strings.TrimPrefix(next, "/"))
	w.WriteHeader(http.StatusSeeOther)
}

// logout ends the request's session, if any, clears its cookie and goes
// to the login page.
func (a *auth) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(SessionCookie); err == nil {
		a.sessions.end(c.Value)
	}
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https", SameSite: http.SameSiteStrictMode,
	})
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Location", "./login") // relative to /logout
	w.WriteHeader(http.StatusSeeOther)
}

// localPath is next if it is a path of this dashboard, else "/".
func localPath(next string) string {
	u, err := url.Parse(next)
	if err != nil || next == "" || u.Scheme != "" || u.Host != "" || u.User != nil || !strings.HasPrefix(next, "/") ||
		strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	return next
}

// crossOrigin is net/http's check of a browser's request: Sec-Fetch-Site,
// or else Origin against Host.
var crossOrigin = http.NewCrossOriginProtection()

// sameOrigin reports whether the request comes from the dashboard's own
// pages: crossOrigin lets it through, and, from a browser that sends
// neither Sec-Fetch-Site nor Origin, Referer names this host. With none of
// the three, strict refuses it, and loose lets it through (a program, not a
// browser).
func sameOrigin(r *http.Request, strict bool) bool {
	if crossOrigin.Check(r) != nil {
		return false
	}
	if r.Header.Get("Sec-Fetch-Site") != "" || r.Header.Get("Origin") != "" {
		return true
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		u, err := url.Parse(ref)
		return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
	}
	return !strict
}
