// Package redisconn turns the Redis a user names, a URL and for TLS a CA
// file and a client certificate, into what evalpool connects with: one
// go-redis client that the pool and Asynq share, Asynq's connection option
// for the parts that open a connection of their own (Asynqmon), and the URL
// with its passwords masked, for messages.
//
// It exists because go-redis and Asynq each parse Redis URLs, differently:
// Asynq's ParseRedisURI drops the ACL username, knows no cluster, and reads
// a Sentinel URL's password as the Sentinels'; go-redis has no Sentinel URL
// of the form people write. A dashboard whose Asynqmon logs in as "default"
// while the worker logs in as "evalpool" fails on any Redis with ACLs, so
// both connections are built here, from one parse. And a password must never
// reach a log line or a terminal: String, Redact and every error of this
// package show it as xxxxx.
//
// # URL forms
//
//	redis://[user[:password]@]host[:port][/db][?option=value...]
//	rediss://...                                  the same over TLS
//	unix://[user[:password]@]/path/redis.sock[?db=N]
//	redis://[user[:password]@]n1:7000?addr=n2:7000&addr=n3:7000
//	redis-sentinel://[user[:password]@]s1:26379,s2:26379,s3:26379[/db]?master=NAME[&sentinel_username=U][&sentinel_password=P]
//	rediss-sentinel://...                         the same over TLS
//
// A redis:// URL with addr options is a Redis Cluster, its nodes the host
// and every addr. The options of redis:// and cluster URLs are go-redis's
// (dial_timeout=3s, pool_size=20, ...; see redis.ParseURL).
//
// A Sentinel URL lists the Sentinels, comma-separated, port 26379 when
// omitted, and names the master with master=NAME (required). Its user and
// password are the master's and replicas', as in a redis:// URL; the
// Sentinels' own credentials, when they require any, are sentinel_username
// and sentinel_password. Its other options are go-redis's, as for
// redis:// (see redis.ParseFailoverURL). The client asks the Sentinels for
// the master, and follows it when they fail it over.
//
// There is no separate setting for the master name or the Sentinels: the
// URL is the whole address, so that one string (a flag or one environment
// variable) says where Redis is.
//
// # TLS
//
// rediss:// and rediss-sentinel:// verify the server against the system's
// roots, or only against TLSFiles.CA when given. TLSFiles.Cert and
// TLSFiles.Key, given together, are the client certificate of mutual TLS.
// Over Sentinel, TLS is used to the Sentinels and to the master alike, each
// verified against the address it was dialled at. TLS files with a redis://
// URL are an error, not a silent plain-text connection.
package redisconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

var (
	// ErrBadURL is returned by Parse for a URL it cannot use.
	ErrBadURL = errors.New("bad Redis URL")
	// ErrBadTLS is returned by Parse for TLS files it cannot use.
	ErrBadTLS = errors.New("bad Redis TLS setting")
	// ErrConnect wraps, with the redacted URL, the errors of connecting to
	// Redis (refused, timed out, TLS handshake, no Sentinel answering, a
	// wrong password) and every error of Conn.Ping.
	ErrConnect = errors.New("cannot connect to Redis")
)

// TLSFiles name the PEM files of a TLS connection to Redis.
type TLSFiles struct {
	// CA holds the certificates the server's must chain to. Defaults to the
	// system's roots.
	CA string
	// Cert and Key are the client certificate and its key, for servers that
	// require one (mutual TLS, tls-auth-clients yes).
	Cert, Key string
}

func (f TLSFiles) empty() bool { return f == TLSFiles{} }

// Config is a Redis as the user names it.
type Config struct {
	// URL is the Redis URL, in one of the forms of the package doc.
	URL string
	// TLS names the CA and client certificate of a rediss:// URL.
	TLS TLSFiles
	// DialTimeout bounds one dial unless the URL sets dial_timeout.
	// Defaults to go-redis's (5 s).
	DialTimeout time.Duration
}

// Kind is what a URL names: one server, a cluster, or a master watched by
// Sentinels.
type Kind int

const (
	Standalone Kind = iota
	Cluster
	Sentinel
)

func (k Kind) String() string {
	switch k {
	case Standalone:
		return "standalone"
	case Cluster:
		return "cluster"
	case Sentinel:
		return "sentinel"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Conn is a parsed Config: it makes clients and says where they go without
// the password. It is immutable and safe for concurrent use.
type Conn struct {
	kind     Kind
	redacted string
	simple   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
}

// Parse reads cfg. Its errors wrap ErrBadURL or ErrBadTLS, and name the URL
// redacted.
func Parse(cfg Config) (*Conn, error) {
	c := &Conn{redacted: Redact(cfg.URL)}
	scheme, rest, ok := strings.Cut(cfg.URL, "://")
	switch {
	case strings.TrimSpace(cfg.URL) == "":
		return nil, fmt.Errorf("%w: empty; want redis://host:port/db", ErrBadURL)
	case !ok:
		return nil, fmt.Errorf("%w %q: no scheme; did you mean %q?", ErrBadURL, c.redacted, "redis://"+c.redacted)
	}
	var (
		tlsConfig *tls.Config
		err       error
	)
	switch scheme = strings.ToLower(scheme); scheme {
	case "redis", "rediss", "unix":
		if isCluster(cfg.URL) {
			c.kind = Cluster
			if c.cluster, err = redis.ParseClusterURL(cfg.URL); err != nil {
				return nil, c.badURL(cfg.URL, err)
			}
			tlsConfig = c.cluster.TLSConfig
			c.cluster.DialTimeout = orDefault(c.cluster.DialTimeout, cfg.DialTimeout)
			break
		}
		c.kind = Standalone
		if c.simple, err = redis.ParseURL(cfg.URL); err != nil {
			return nil, c.badURL(cfg.URL, err)
		}
		tlsConfig = c.simple.TLSConfig
		c.simple.DialTimeout = orDefault(c.simple.DialTimeout, cfg.DialTimeout)
	case "redis-sentinel", "rediss-sentinel":
		c.kind = Sentinel
		if c.failover, err = parseSentinel(scheme, rest); err != nil {
			return nil, c.badURL(cfg.URL, err)
		}
		tlsConfig = c.failover.TLSConfig
		c.failover.DialTimeout = orDefault(c.failover.DialTimeout, cfg.DialTimeout)
	default:
		return nil, fmt.Errorf("%w %q: invalid URL scheme %q; want redis, rediss, redis-sentinel, rediss-sentinel or unix", ErrBadURL, c.redacted, scheme)
	}
	c.boundByContext()
	if err := applyTLS(tlsConfig, cfg.TLS); err != nil {
		if errors.Is(err, errPlainText) {
			return nil, fmt.Errorf("%w: a CA, certificate or key is given but %s is not a TLS URL (rediss://, rediss-sentinel://)", ErrBadTLS, c.redacted)
		}
		return nil, err
	}
	return c, nil
}

// boundByContext makes every call end by its context's deadline. A lease
// holder bounds each Redis call by its lease; without this go-redis would
// wait out its read timeout on a hung connection, past the lease, whatever
// the URL's context_timeout_enabled says.
func (c *Conn) boundByContext() {
	switch {
	case c.cluster != nil:
		c.cluster.ContextTimeoutEnabled = true
	case c.failover != nil:
		c.failover.ContextTimeoutEnabled = true
	default:
		c.simple.ContextTimeoutEnabled = true
	}
}

// orDefault returns v, or def when v is not set.
func orDefault(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

// badURL wraps an error of parsing the URL. url.Parse's errors quote the
// whole URL, password and all: only their cause is kept.
func (c *Conn) badURL(raw string, err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	// go-redis quotes an option it could not parse, a cluster node's
	// user:password@host:port or an escaped password=... among them.
	words := strings.Fields(err.Error())
	for i, w := range words {
		words[i] = maskUserinfo(w)
		if k, _, ok := strings.Cut(w, "="); ok && isPasswordKey(k) {
			words[i] = k + "=" + passwordMask
		}
	}
	// A password holding an unescaped #, ? or / spills into what the
	// parsers take for a host, port or path, which they quote.
	pieces := strings.FieldsFunc(secretRegion(raw), func(r rune) bool { return strings.ContainsRune("#?/@:", r) })
	msg := quoted.ReplaceAllStringFunc(strings.Join(words, " "), func(q string) string {
		v, err := strconv.Unquote(q)
		for _, p := range pieces {
			if err == nil && strings.Contains(v, p) {
				return strconv.Quote(passwordMask)
			}
		}
		return q
	})
	return fmt.Errorf("%w %q: %s", ErrBadURL, c.redacted, msg)
}

var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// secretRegion is the part of a URL a password may be in: from the colon
// after its user name to its last @. The pieces of it between the
// characters a URL's parts are cut at are what a parser may quote.
func secretRegion(raw string) string {
	_, rest, _ := strings.Cut(raw, "://")
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	_, region, _ := strings.Cut(rest[:at], ":")
	return region
}

// isCluster reports whether a redis:// URL names more nodes (addr=).
func isCluster(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Query().Has("addr")
}

// replicaRouting are go-redis's failover options that send commands to
// replicas, which a pool's scripts cannot run on.
var replicaRouting = map[string]bool{"route_by_latency": true, "route_by_latency_tolerance": true, "route_randomly": true, "replica_only": true, "use_disconnected_replicas": true}

// Sentinel URL options.
const (
	optMaster           = "master"
	optSentinelUsername = "sentinel_username"
	optSentinelPassword = "sentinel_password"
	defaultSentinelPort = "26379"
)

// parseSentinel reads what follows "redis-sentinel://" and hands it to
// go-redis's ParseFailoverURL in the form that reads: the Sentinels' list
// is cut out by hand (a list of host:port is not a URL host, and url.Parse
// refuses its colons), and the credentials swap places, since in this form
// the userinfo is the master's, as in a redis:// URL, and in go-redis's the
// Sentinels'. Every other option is go-redis's (dial_timeout=3s, ...).
func parseSentinel(scheme, rest string) (*redis.FailoverOptions, error) {
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hosts := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hosts = authority[:i+1], authority[i+1:]
	}
	if hosts == "" {
		return nil, errors.New("no Sentinel address; want s1:26379,s2:26379,s3:26379")
	}
	var addrs []string
	for h := range strings.SplitSeq(hosts, ",") {
		addr, err := sentinelAddr(h)
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, addr)
	}
	u, err := url.Parse(scheme + "://" + userinfo + "sentinel" + tail)
	if err != nil {
		return nil, err
	}
	db := strings.Trim(u.Path, "/")
	if n, err := strconv.Atoi(db); db != "" && (err != nil || n < 0) {
		return nil, fmt.Errorf("invalid database number %q", db)
	}
	q := u.Query()
	if q.Get(optMaster) == "" {
		return nil, fmt.Errorf("no master name; add ?%s=NAME", optMaster)
	}
	options := url.Values{"master_name": {q.Get(optMaster)}, "addr": addrs[1:]}
	if u.User != nil {
		options.Set("username", u.User.Username())
		if pw, ok := u.User.Password(); ok {
			options.Set("password", pw)
		}
	}
	for k, vs := range q {
		switch {
		case k == optMaster || k == optSentinelUsername || k == optSentinelPassword:
			if len(vs) > 1 {
				return nil, fmt.Errorf("option %q given %d times", k, len(vs))
			}
		case k == "master_name" || k == "addr" || k == "username" || k == "password":
			return nil, fmt.Errorf("unknown option %q; the master is %s, the Sentinels are the host list, the master's user and password the URL's", k, optMaster)
		case isPasswordKey(k):
			return nil, errors.New("unknown password option; the Sentinels' is sentinel_password, the master's the URL's")
		case replicaRouting[k]:
			return nil, fmt.Errorf("option %q would send commands to replicas: evalpool needs the master", k)
		default:
			options[k] = vs
		}
	}
	target := url.URL{Scheme: "redis", Host: addrs[0], Path: "/" + db, RawQuery: options.Encode()}
	if scheme == "rediss-sentinel" {
		target.Scheme = "rediss"
	}
	if q.Has(optSentinelUsername) || q.Has(optSentinelPassword) {
		target.User = url.UserPassword(q.Get(optSentinelUsername), q.Get(optSentinelPassword))
	}
	o, err := redis.ParseFailoverURL(target.String())
	if err != nil {
		return nil, err
	}
	if o.TLSConfig != nil {
		// Each Sentinel and master is verified against the address it is
		// dialled at, not the first Sentinel's.
		o.TLSConfig.ServerName = ""
	}
	return o, nil
}

func sentinelAddr(h string) (string, error) {
	if h == "" {
		return "", errors.New("empty Sentinel address in the list")
	}
	// The messages quote the address: badURL masks any part of it that may
	// be a password spilt into the list.
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		// No port: the Sentinel's default. A bracketed IPv6 host loses its
		// brackets to JoinHostPort's own.
		host, port = h, defaultSentinelPort
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			host = h[1 : len(h)-1]
		} else if strings.ContainsAny(h, ":[]") {
			return "", fmt.Errorf("invalid Sentinel address %q", h)
		}
	}
	if host == "" || strings.ContainsAny(host, "[]") {
		return "", fmt.Errorf("invalid Sentinel address %q", h)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", fmt.Errorf("invalid port %q in Sentinel address %q", port, h)
	}
	return net.JoinHostPort(host, port), nil
}

var errPlainText = errors.New("TLS files for a plain-text URL")

// applyTLS loads files into c, the TLS config of a rediss URL (nil for a
// plain-text one).
func applyTLS(c *tls.Config, files TLSFiles) error {
	if files.empty() {
		return nil
	}
	if c == nil {
		return errPlainText
	}
	if (files.Cert == "") != (files.Key == "") {
		return fmt.Errorf("%w: a client certificate needs both its certificate and its key file", ErrBadTLS)
	}
	if files.CA != "" {
		pem, err := os.ReadFile(files.CA)
		if err != nil {
			return fmt.Errorf("%w: CA: %w", ErrBadTLS, err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%w: CA %s holds no PEM certificate", ErrBadTLS, files.CA)
		}
		c.RootCAs = roots
	}
	if files.Cert != "" {
		cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
		if err != nil {
			return fmt.Errorf("%w: client certificate %s, key %s: %w", ErrBadTLS, files.Cert, files.Key, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return nil
}

// Kind is what the URL names.
func (c *Conn) Kind() Kind { return c.kind }

// String is the URL with its passwords masked.
func (c *Conn) String() string { return c.redacted }

// NewClient makes a client: a failover client for a Sentinel URL, a cluster
// client for a cluster URL, else a plain one. Its errors of connecting
// (see ErrConnect) wrap ErrConnect and name the redacted URL. The caller
// closes it.
func (c *Conn) NewClient() redis.UniversalClient {
	hook := connectErrors{url: c.redacted}
	switch c.kind {
	case Cluster:
		o := *c.cluster
		cc := redis.NewClusterClient(&o)
		cc.OnNewNode(func(node *redis.Client) { node.AddHook(hook) })
		return cc
	case Sentinel:
		o := *c.failover
		o.SentinelAddrs = append([]string(nil), o.SentinelAddrs...)
		fc := redis.NewFailoverClient(&o)
		fc.AddHook(hook)
		return fc
	default:
		o := *c.simple
		sc := redis.NewClient(&o)
		sc.AddHook(hook)
		return sc
	}
}

// AsynqConnOpt is the same connection as Asynq's option, username, TLS and
// all, for the parts of Asynq that open their own (Asynqmon).
func (c *Conn) AsynqConnOpt() asynq.RedisConnOpt {
	switch c.kind {
	case Cluster:
		o := c.cluster
		return asynq.RedisClusterClientOpt{
			Addrs: append([]string(nil), o.Addrs...), MaxRedirects: o.MaxRedirects,
			Username: o.Username, Password: o.Password,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			TLSConfig: cloneTLS(o.TLSConfig),
		}
	case Sentinel:
		o := c.failover
		return asynq.RedisFailoverClientOpt{
			MasterName: o.MasterName, SentinelAddrs: append([]string(nil), o.SentinelAddrs...),
			SentinelUsername: o.SentinelUsername, SentinelPassword: o.SentinelPassword,
			Username: o.Username, Password: o.Password, DB: o.DB,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			PoolSize: o.PoolSize, TLSConfig: cloneTLS(o.TLSConfig),
		}
	default:
		o := c.simple
		return asynq.RedisClientOpt{
			Network: o.Network, Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			PoolSize: o.PoolSize, TLSConfig: cloneTLS(o.TLSConfig),
		}
	}
}

func cloneTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	return c.Clone()
}

// Ping checks that client, made by NewClient, reaches Redis and may use it:
// its error, a refused dial as well as a refused password, wraps ErrConnect
// and names the redacted URL.
func (c *Conn) Ping(ctx context.Context, client redis.UniversalClient) error {
	err := client.Ping(ctx).Err()
	if err == nil || errors.Is(err, ErrConnect) {
		return err
	}
	return connectError(c.redacted, err)
}

func connectError(url string, err error) error {
	return fmt.Errorf("%w %s: %w", ErrConnect, url, err)
}

// connectErrors names the URL in the errors of connecting: those of dials,
// which otherwise name an address the user may not recognise (a node, the
// master a Sentinel named) or none, and those of the first commands on a
// new connection, when Redis refuses the password (WRONGPASS, NOAUTH) or,
// in TLS 1.3, the server refuses the client certificate after the client
// finished its handshake.
type connectErrors struct{ url string }

func (h connectErrors) wrap(err error) error {
	if err == nil || errors.Is(err, ErrConnect) {
		return err
	}
	return connectError(h.url, err)
}

func (h connectErrors) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		return conn, h.wrap(err)
	}
}

func (h connectErrors) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if refused(err) {
			err = h.wrap(err)
			cmd.SetErr(err)
		}
		return err
	}
}

func (h connectErrors) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if refused(err) {
			err = h.wrap(err)
		}
		for _, cmd := range cmds {
			if refused(cmd.Err()) {
				cmd.SetErr(h.wrap(cmd.Err()))
			}
		}
		return err
	}
}

// refused reports whether err is Redis refusing a connection it accepted:
// a wrong password, or a TLS alert (a missing client certificate).
func refused(err error) bool {
	if err == nil {
		return false
	}
	if redis.HasErrorPrefix(err, "WRONGPASS") || redis.HasErrorPrefix(err, "NOAUTH") {
		return true
	}
	opErr, ok := errors.AsType[*net.OpError](err)
	return ok && opErr.Op == "remote error"
}

// maskUserinfo masks the password of "user:password@host...", up to its
// last @ (a password may hold an unescaped @); s without one is returned
// as it is.
func maskUserinfo(s string) string {
	at := strings.LastIndex(s, "@")
	if at < 0 {
		return s
	}
	colon := strings.Index(s[:at], ":")
	if colon < 0 {
		return s
	}
	return s[:colon+1] + passwordMask + s[at:]
}

// passwordMask stands for a password in messages.
const passwordMask = "xxxxx"

// Redact masks the passwords of a Redis URL, well-formed or not: the
// password of its userinfo, and the password and sentinel_password
// options. It is for messages; it does not validate.
func Redact(rawURL string) string {
	start := 0
	if i := strings.Index(rawURL, "://"); i >= 0 {
		start = i + 3
	}
	rest := rawURL[start:]
	end := strings.IndexAny(rest, "?#")
	if end < 0 {
		end = len(rest)
	}
	// The userinfo ends at the last @ before the query: a password may hold
	// an unescaped / or @. One holding an unescaped ? or # spills past
	// them: an @ after them with no = before it ends the userinfo.
	if at := strings.LastIndex(rest, "@"); at > end && !strings.Contains(rest[end:at], "=") {
		end = at + 1
		if next := strings.IndexAny(rest[end:], "?#"); next >= 0 {
			end += next
		} else {
			end = len(rest)
		}
	}
	authority := maskUserinfo(rest[:end])
	out := rawURL[:start] + authority
	tail := rest[end:]
	query, fragment, hasFragment := strings.Cut(tail, "#")
	if strings.HasPrefix(query, "?") {
		params := strings.FieldsFunc(query[1:], func(r rune) bool { return r == '&' || r == ';' })
		for i, p := range params {
			k, v, _ := strings.Cut(p, "=")
			unescaped, err := url.QueryUnescape(p)
			if err != nil {
				unescaped = p
			}
			uk, _, _ := strings.Cut(unescaped, "=")
			switch {
			case isPasswordKey(uk):
				params[i] = uk + "=" + passwordMask
			case k == "addr":
				// A cluster node's address may carry userinfo of its own.
				params[i] = k + "=" + maskUserinfo(v)
			}
		}
		query = "?" + strings.Join(params, "&")
	}
	out += query
	if hasFragment && fragment != "" {
		// Redis URLs have no fragment: one is a password's end spilt
		// past an unescaped #.
		out += "#" + passwordMask
	} else if hasFragment {
		out += "#"
	}
	return out
}

// isPasswordKey reports whether an option's name says it holds a password
// (password, sentinel_password, or any other spelling of one): its value
// never shows.
func isPasswordKey(k string) bool {
	return strings.Contains(strings.ToLower(k), "password")
}
