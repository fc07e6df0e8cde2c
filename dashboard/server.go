package dashboard

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the server's Options (see Serve).
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 60 * time.Second
	DefaultIdleTimeout       = 30 * time.Second
	DefaultMaxConns          = 1024
)

// ErrServing is returned by Serve when the dashboard serves already.
var ErrServing = errors.New("dashboard: serves already")

// Serve serves the dashboard on l until Shutdown, and then returns
// http.ErrServerClosed. Its http.Server bounds what a client may hold
// (Options.ReadHeaderTimeout, ReadTimeout, IdleTimeout) and its listener
// caps the connections (Options.MaxConns): a connection past the cap
// closes the connection that waits for a request the longest, one that
// never sent a token first; when every connection is within a request, it
// is closed at once. So connections that send nothing cannot keep out a
// request with the token, and the process's descriptors last.
func (d *Dashboard) Serve(l net.Listener) error {
	d.srvMu.Lock()
	if d.srv != nil {
		d.srvMu.Unlock()
		return ErrServing
	}
	c := &connCap{Listener: l, max: d.opts.MaxConns, conns: map[net.Conn]*capConn{}, closed: d.connsClosed}
	d.cap = c
	d.srv = &http.Server{
		Handler:           d,
		ReadHeaderTimeout: d.opts.ReadHeaderTimeout,
		ReadTimeout:       d.opts.ReadTimeout,
		IdleTimeout:       d.opts.IdleTimeout,
		ConnState:         c.track,
		ConnContext:       c.context,
		ErrorLog:          log.New(io.Discard, "", 0), // a client's broken TLS or header: nothing to act on
	}
	srv := d.srv
	d.srvMu.Unlock()
	return srv.Serve(c)
}

// Shutdown stops Serve: it stops accepting, closes the idle connections
// and waits, until ctx ends, for the requests being served (a followed
// stream ends when its client goes or ctx ends).
func (d *Dashboard) Shutdown(ctx context.Context) error {
	d.srvMu.Lock()
	srv := d.srv
	d.srvMu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	if err != nil {
		_ = srv.Close()
	}
	return err
}

// connCap is a listener that caps the connections open (see Serve).
type connCap struct {
	net.Listener
	max    int
	closed *prometheus.CounterVec

	mu    sync.Mutex
	conns map[net.Conn]*capConn
}

// capConn is a connection's state, as the http.Server tells it.
type capConn struct {
	conn   net.Conn
	busy   bool      // within a request
	authed bool      // sent the token (or a session) once
	since  time.Time // of the last change of state
}

type capConnKey struct{}

// Accept returns the next connection within the cap, closing another (or
// the new one) past it.
func (c *connCap) Accept() (net.Conn, error) {
	for {
		conn, err := c.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c.admit(conn) {
			return conn, nil
		}
		_ = conn.Close()
	}
}

func (c *connCap) admit(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.conns) >= c.max {
		var victim *capConn
		for _, e := range c.conns {
			if e.busy {
				continue
			}
			if victim == nil || !e.authed && victim.authed || e.authed == victim.authed && e.since.Before(victim.since) {
				victim = e
			}
		}
		if victim == nil {
			c.closed.WithLabelValues("refused").Inc()
			return false
		}
		delete(c.conns, victim.conn)
		_ = victim.conn.Close()
		c.closed.WithLabelValues("evicted").Inc()
	}
	c.conns[conn] = &capConn{conn: conn, since: time.Now()}
	return true
}

// track is the http.Server's ConnState hook.
func (c *connCap) track(conn net.Conn, s http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.conns[conn]
	switch {
	case s == http.StateHijacked || s == http.StateClosed:
		delete(c.conns, conn)
	case e != nil && (s == http.StateActive || s == http.StateIdle):
		e.busy, e.since = s == http.StateActive, time.Now()
	}
}

// context is the http.Server's ConnContext hook: the requests of a
// connection find it there (authenticated).
func (c *connCap) context(ctx context.Context, conn net.Conn) context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.conns[conn]; e != nil {
		return context.WithValue(ctx, capConnKey{}, e)
	}
	return ctx
}

// authenticated marks the request's connection as one that sent the
// token: it is closed past the cap only when no other idle one is left.
func (c *connCap) authenticated(r *http.Request) {
	if e, ok := r.Context().Value(capConnKey{}).(*capConn); ok {
		c.mu.Lock()
		e.authed = true
		c.mu.Unlock()
	}
}

// frameGuard sets, on every response, the headers that keep any page of
// the dashboard (Asynqmon's included) out of another site's frames
// (clickjacking): X-Frame-Options for old browsers, CSP frame-ancestors for
// the rest (as a policy of its own when the handler set one without it:
// browsers enforce every policy given).
type frameGuard struct {
	http.ResponseWriter
	wrote bool
}

func (g *frameGuard) WriteHeader(code int) {
	if !g.wrote {
		h := g.Header()
		h.Set("X-Frame-Options", "DENY")
		framed := false
		for _, p := range h.Values("Content-Security-Policy") {
			framed = framed || strings.Contains(strings.ToLower(p), "frame-ancestors")
		}
		if !framed {
			h.Add("Content-Security-Policy", "frame-ancestors 'none'")
		}
	}
	if code >= 200 {
		g.wrote = true
	}
	g.ResponseWriter.WriteHeader(code)
}

func (g *frameGuard) Write(b []byte) (int, error) {
	if !g.wrote {
		g.WriteHeader(http.StatusOK)
	}
	return g.ResponseWriter.Write(b)
}

// Flush is for handlers that look for http.Flusher.
func (g *frameGuard) Flush() {
	if !g.wrote {
		g.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(g.ResponseWriter).Flush()
}

// Unwrap is for http.ResponseController.
func (g *frameGuard) Unwrap() http.ResponseWriter { return g.ResponseWriter }
