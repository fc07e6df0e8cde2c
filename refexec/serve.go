package refexec

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Serve serves the executor on l until ctx ends, within the limits of its
// options (MaxConns, ReadHeaderTimeout, ReadTimeout, IdleTimeout), then
// shuts down: it waits up to ShutdownTimeout for running requests, closes
// the connections of those still running (which stops their evals), and
// returns nil. With Exec and a StateDir it first claims the directory and
// ends the commands a previous executor left there, and refuses to serve if
// it cannot. It returns an error only when serving fails before ctx ends.
//
// A v2 signature is taken for the names the executor is reached by on l
// (see Options.Hosts) and for no other.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	s.listenOn(l.Addr())
	return serve(ctx, l, s, s.opts, s.opts.MaxConns, s.log)
}

// Serve serves the fleet on l like Server.Serve, allowing MaxConns
// connections per executor of the fleet.
func (f *Fleet) Serve(ctx context.Context, l net.Listener) error {
	for _, s := range f.Servers {
		s.listenOn(l.Addr())
	}
	return serve(ctx, l, f, f.opts, f.opts.MaxConns*len(f.Servers), f.Servers[0].log)
}

// maxHeaderBytes bounds a request's headers: the protocol's are a handful,
// and net/http's default of 1 MiB per connection is memory a client that
// never sends a body could hold.
const maxHeaderBytes = 64 << 10

func serve(ctx context.Context, l net.Listener, h http.Handler, o Options, maxConns int, log zerolog.Logger) error {
	if o.Exec != "" && o.StateDir != "" {
		unlock, err := claimStateDir(ctx, o.StateDir, log)
		if err != nil {
			return err
		}
		defer unlock()
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		// ReadTimeout bounds reading a request's body, so that a client
		// trickling one cannot hold a connection and its buffer for ever.
		// It does not bound the eval: once the body is read, net/http
		// watches for the client leaving with no deadline
		// (TestEvalOutlivesReadTimeout holds it to that). There is no
		// WriteTimeout: an eval's answer comes when the eval ends.
		ReadTimeout:    o.ReadTimeout,
		IdleTimeout:    o.IdleTimeout,
		MaxHeaderBytes: maxHeaderBytes,
		ConnContext:    withConn,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(newLimitListener(l, maxConns)) }()
	select {
	case err := <-errc:
		return fmt.Errorf("refexec: serve %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ShutdownTimeout)
	defer cancel()
	if srv.Shutdown(shutdown) != nil {
		// Evals still running: closing their connections cancels them.
		_ = srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("refexec: serve %s: %w", l.Addr(), err)
	}
	return nil
}

// limitListener keeps at most n connections open at once. When n are open
// and a new one comes, it closes the oldest connection not yet
// authenticated to make room (a client without the secret, or a slow
// one), and only when every open connection is authenticated does the
// next wait in the kernel's backlog until one closes: clients that never
// authenticate cannot starve those that do. It accepts while it can make
// room, so n+1 are open for a moment at most.
type limitListener struct {
	net.Listener
	n         int
	closed    chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	open    int
	pending list.List     // *limitConn not yet authenticated, oldest first
	changed chan struct{} // closed and replaced when a connection closes or authenticates
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, n: n, closed: make(chan struct{}), changed: make(chan struct{})}
}

// notifyLocked wakes Accept waiting for a connection to close or
// authenticate.
func (l *limitListener) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// wait waits until ok holds, under l.mu, which it returns holding.
func (l *limitListener) waitLocked(ok func() bool) error {
	for !ok() {
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-l.closed:
			l.mu.Lock()
			return net.ErrClosed
		}
		l.mu.Lock()
	}
	return nil
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	// Accept only when there is room, or room to make.
	err := l.waitLocked(func() bool { return l.open < l.n || l.pending.Len() > 0 })
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	for l.open >= l.n {
		if e := l.pending.Front(); e != nil {
			old := e.Value.(*limitConn)
			l.mu.Unlock()
			_ = old.Close() // leaves l.pending and gives its slot back
			l.mu.Lock()
			continue
		}
		// The pending ones authenticated meanwhile: wait for a slot.
		if err := l.waitLocked(func() bool { return l.open < l.n || l.pending.Len() > 0 }); err != nil {
			l.mu.Unlock()
			_ = c.Close()
			return nil, err
		}
	}
	l.open++
	lc := &limitConn{Conn: c, l: l}
	lc.elem = l.pending.PushBack(lc)
	l.mu.Unlock()
	return lc, nil
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.closed) })
	return err
}

type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
	elem *list.Element // in l.pending until authenticated; guarded by l.mu
}

// authenticate takes the connection out of those the listener may close
// to make room.
func (c *limitConn) authenticate() {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.elem != nil {
		c.l.pending.Remove(c.elem)
		c.elem = nil
		c.l.notifyLocked()
	}
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		defer c.l.mu.Unlock()
		if c.elem != nil {
			c.l.pending.Remove(c.elem)
			c.elem = nil
		}
		c.l.open--
		c.l.notifyLocked()
	})
	return err
}

// Defaults of the serving limits.
const (
	defaultMaxConns          = 64
	defaultReadHeaderTimeout = 5 * time.Second
	defaultReadTimeout       = 30 * time.Second
	defaultBodyTimeout       = 5 * time.Second
	defaultIdleTimeout       = 60 * time.Second
	defaultShutdownTimeout   = 5 * time.Second
)
