// Package dashboard serves what people look at: a live page of the pool's
// executors, Asynqmon for the queues, the pool as JSON, Prometheus metrics,
// and the JSON API (package api, under /api/v1), from the Go binary alone
// (no Node build at run time).
//
// Authentication (Options.AuthToken): when a token is set, every route but
// /healthz and the login page needs it, as "Authorization: Bearer TOKEN"
// (for programs: the API, Prometheus) or as the session cookie that
// POST /login sets for the right token (for browsers: HttpOnly,
// SameSite=Strict, valid for SessionTTL, an HMAC of its expiry under the
// token, so changing the token ends every session). Tokens are compared in
// constant time. Without it: 401.
//
// Cross-site requests: a request that changes anything (any method but GET
// and HEAD, Asynqmon's API and POST /login included) authenticated by the
// cookie must come from the dashboard's own pages: Sec-Fetch-Site, Origin,
// or failing those Referer, must name the request's Host; with none of
// them it is refused too (403). A bearer token is never sent by a browser
// on its own, so it needs no such check. Without a token, a request that
// names another origin is refused the same way, and one naming none (curl,
// scripts) is let through. A reverse proxy must pass the Host header on.
//
// Asynqmon is read-only (its UI shows no actions; its API refuses anything
// but GET and HEAD with 403) unless Options.Admin is set.
package dashboard

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynq/x/metrics"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/api"
	"github.com/evalpool/evalpool/pool"
)

//go:embed index.html
var indexHTML []byte

// MonitoringPath is where Asynqmon is mounted.
const MonitoringPath = "/monitoring"

// Options configure a dashboard.
type Options struct {
	// Pool is the pool the page shows, and the API's. Required.
	Pool *pool.Pool
	// Redis is the client the queue metrics and the API read with. Required.
	Redis redis.UniversalClient
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
}

// DefaultSessionTTL is Options.SessionTTL's default.
const DefaultSessionTTL = 12 * time.Hour

func (o *Options) validate() error {
	switch {
	case o.Pool == nil:
		return errors.New("dashboard: Options.Pool is required")
	case o.Redis == nil:
		return errors.New("dashboard: Options.Redis is required")
	case o.Asynqmon == nil:
		return errors.New("dashboard: Options.Asynqmon is required")
	case o.SessionTTL < 0:
		return errors.New("dashboard: Options.SessionTTL may not be negative")
	case strings.TrimSpace(o.AuthToken) != o.AuthToken:
		return errors.New("dashboard: Options.AuthToken may not start or end with spaces")
	}
	return nil
}

// Dashboard is an http.Handler for the pool page (/), /api/pool, the API
// (/api/v1/), /monitoring/ (Asynqmon), /metrics, /healthz, and /login when
// it has a token.
type Dashboard struct {
	opts Options
	log  zerolog.Logger
	mux  *http.ServeMux
	mon  *asynqmon.HTTPHandler
	auth *auth // nil without a token
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
	d := &Dashboard{opts: opts, log: zerolog.Nop(), mux: http.NewServeMux()}
	if opts.Logger != nil {
		d.log = *opts.Logger
	}
	if opts.AuthToken != "" {
		d.auth = newAuth(opts.AuthToken, opts.SessionTTL)
	}
	apiHandler, err := api.New(api.Options{Redis: opts.Redis, Pool: opts.Pool, Logger: opts.Logger, MaxBodyBytes: opts.MaxBodyBytes})
	if err != nil {
		return nil, err
	}
	insp := asynq.NewInspectorFromRedisClient(opts.Redis)
	if err := opts.Registry.Register(pool.NewStateCollector(opts.Pool)); err != nil {
		return nil, err
	}
	if err := opts.Registry.Register(metrics.NewQueueMetricsCollector(insp)); err != nil {
		return nil, err
	}
	_ = opts.Registry.Register(collectors.NewGoCollector())
	d.mon = asynqmon.New(asynqmon.Options{RootPath: MonitoringPath, RedisConnOpt: opts.Asynqmon, ReadOnly: !opts.Admin})
	d.mux.Handle(MonitoringPath+"/", d.mon)
	d.mux.Handle(api.Prefix+"/", apiHandler)
	d.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	d.mux.HandleFunc("GET /api/pool", d.apiPool)
	d.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	d.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(indexHTML)
	})
	if d.auth != nil {
		d.mux.HandleFunc("GET /login", d.auth.loginPage)
		d.mux.HandleFunc("POST /login", d.auth.login)
	}
	return d, nil
}

// ServeHTTP implements http.Handler: the checks of the package doc, then
// the routes.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	unsafe := r.Method != http.MethodGet && r.Method != http.MethodHead
	switch {
	case r.URL.Path == "/healthz":
	case d.auth == nil:
		if unsafe && !sameOrigin(r, false) {
			refuse(w, r, http.StatusForbidden, "cross-origin request refused")
			return
		}
	case r.URL.Path == "/login":
		// Logging in from another site's form is refused too (login CSRF).
		if unsafe && !sameOrigin(r, true) {
			refuse(w, r, http.StatusForbidden, "cross-origin request refused: log in from the dashboard's own page")
			return
		}
	default:
		switch d.auth.check(r) {
		case byBearer:
		case byCookie:
			if unsafe && !sameOrigin(r, true) {
				refuse(w, r, http.StatusForbidden, "cross-origin request refused: a request that changes anything must come from the dashboard's pages, or carry the token as a bearer")
				return
			}
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

// toAsynqmon reports whether the request goes to Asynqmon.
func (d *Dashboard) toAsynqmon(r *http.Request) bool {
	if strings.HasPrefix(r.URL.Path, MonitoringPath+"/") {
		return true
	}
	_, pattern := d.mux.Handler(r)
	return pattern == MonitoringPath+"/"
}

// refuse answers an error: JSON for the APIs, text for the rest.
func refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	w.Header().Set("Cache-Control", "no-store")
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

func (d *Dashboard) apiPool(w http.ResponseWriter, r *http.Request) {
	st, err := d.opts.Pool.Status(r.Context())
	if err != nil {
		d.log.Error().Err(err).Msg("dashboard: pool status")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(PoolView{Status: st, MonitoringPath: MonitoringPath})
}

// How a request was authenticated.
type authMethod int

const (
	unauthenticated authMethod = iota
	byBearer
	byCookie
)

// SessionCookie is the name of the login cookie.
const SessionCookie = "evalpool_session"

// auth checks the token and the login cookie. The cookie is
// "EXPIRY.MAC": EXPIRY in Unix seconds, MAC the hex HMAC-SHA256 of it under
// the token: nothing is kept on the server, and a new token ends every
// session.
type auth struct {
	tokenSum [sha256.Size]byte
	key      []byte
	ttl      time.Duration
	now      func() time.Time
}

func newAuth(token string, ttl time.Duration) *auth {
	key := hmac.New(sha256.New, []byte(token))
	key.Write([]byte("evalpool dashboard session key"))
	return &auth{tokenSum: sha256.Sum256([]byte(token)), key: key.Sum(nil), ttl: ttl, now: time.Now}
}

// tokenOK compares a token given with ours in constant time (of their
// hashes, so that the length leaks nothing either).
func (a *auth) tokenOK(given string) bool {
	sum := sha256.Sum256([]byte(given))
	return subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) == 1
}

func (a *auth) mac(expiry string) string {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(expiry))
	return hex.EncodeToString(m.Sum(nil))
}

// session is a new cookie value, valid for ttl.
func (a *auth) session() string {
	expiry := strconv.FormatInt(a.now().Add(a.ttl).Unix(), 10)
	return expiry + "." + a.mac(expiry)
}

func (a *auth) sessionOK(v string) bool {
	expiry, mac, ok := strings.Cut(v, ".")
	if !ok {
		return false
	}
	secs, err := strconv.ParseInt(expiry, 10, 64)
	if err != nil || !a.now().Before(time.Unix(secs, 0)) {
		return false
	}
	return hmac.Equal([]byte(mac), []byte(a.mac(expiry)))
}

// check says how the request is authenticated, if at all. A bearer
// header, when present, decides alone.
func (a *auth) check(r *http.Request) authMethod {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Bearer") && a.tokenOK(strings.TrimSpace(token)) {
			return byBearer
		}
		return unauthenticated
	}
	if c, err := r.Cookie(SessionCookie); err == nil && a.sessionOK(c.Value) {
		return byCookie
	}
	return unauthenticated
}

// unauthorized answers 401: JSON for the APIs, a page that leads to the
// login for the rest.
func (a *auth) unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="evalpool"`)
	const msg = "authentication required: send Authorization: Bearer TOKEN, or log in at /login"
	if wantsJSON(r) || r.URL.Path == "/metrics" {
		refuse(w, r, http.StatusUnauthorized, msg)
		return
	}
	// Relative links, so that the dashboard may sit under a proxy's prefix.
	login := strings.Repeat("../", strings.Count(strings.TrimPrefix(r.URL.Path, "/"), "/")) + "login?next=" + url.QueryEscape(r.URL.Path)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
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
// page asked for; a wrong token is 401 and the form again.
func (a *auth) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad login form: "+err.Error(), http.StatusBadRequest)
		return
	}
	next := localPath(r.PostForm.Get("next"))
	w.Header().Set("Cache-Control", "no-store")
	if !a.tokenOK(r.PostForm.Get("token")) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_ = loginPage.Execute(w, loginView{Next: next, Error: "Wrong token."})
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     SessionCookie,
		Value:    a.session(),
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

// localPath is next if it is a path of this dashboard, else "/".
func localPath(next string) string {
	u, err := url.Parse(next)
	if err != nil || next == "" || u.Scheme != "" || u.Host != "" || u.User != nil || !strings.HasPrefix(next, "/") ||
		strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	return next
}

// sameOrigin reports whether the request comes from the dashboard's own
// pages: Sec-Fetch-Site, Origin and Referer, those present, must say so
// (Referer is looked at only without Origin). With none of them, strict
// refuses it, and loose lets it through (a program, not a browser).
func sameOrigin(r *http.Request, strict bool) bool {
	site := r.Header.Get("Sec-Fetch-Site")
	switch site {
	case "", "same-origin", "none":
	default:
		return false // cross-site, same-site (another origin), or unknown
	}
	host := strings.ToLower(r.Host)
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && o != "null" && u.Host != "" && strings.ToLower(u.Host) == host
	}
	if ref := r.Header.Get("Referer"); ref != "" {
		u, err := url.Parse(ref)
		return err == nil && u.Host != "" && strings.ToLower(u.Host) == host
	}
	return site == "same-origin" || !strict
}
