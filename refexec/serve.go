package refexec

import (
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
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return serve(ctx, l, s, s.opts, s.opts.MaxConns, s.log)
}

// Serve serves the fleet on l like Server.Serve, allowing MaxConns
// connections per executor of the fleet.
func (f *Fleet) Serve(ctx context.Context, l net.Listener) error {
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

// limitListener accepts at most n connections open at once. The next waits
// in the kernel's backlog until one closes: a burst of clients costs file
// descriptors and buffers for n connections, not for all of them.
type limitListener struct {
	net.Listener
	slots     chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), closed: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.closed) })
	return err
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// Defaults of the serving limits.
const (
	defaultMaxConns          = 64
	defaultReadHeaderTimeout = 5 * time.Second
	defaultReadTimeout       = 30 * time.Second
	defaultIdleTimeout       = 60 * time.Second
	defaultShutdownTimeout   = 5 * time.Second
)
