package refexec

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// hostSet is the names an executor is reached by: the hosts a v2
// signature may be signed for. A name without a port matches any port.
type hostSet struct {
	exact map[string]bool // "host:port", lower case
	any   map[string]bool // bare hosts
}

// parseHost splits a host name as Options.Hosts give it: host:port, or a
// bare host (port "").
func parseHost(h string) (host, port string, err error) {
	if h == "" || strings.ContainsAny(h, "/ \t\r\n@") {
		return "", "", fmt.Errorf("refexec: host %q: want host or host:port", h)
	}
	if host, port, err := net.SplitHostPort(h); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
			return "", "", fmt.Errorf("refexec: host %q: want host or host:port", h)
		}
		return strings.ToLower(host), port, nil
	}
	return strings.ToLower(strings.Trim(h, "[]")), "", nil
}

// newHostSet is the set of names, with port given to every bare one ("":
// they stay bare).
func newHostSet(names []string, port string) *hostSet {
	s := &hostSet{exact: map[string]bool{}, any: map[string]bool{}}
	for _, n := range names {
		host, p, err := parseHost(n)
		switch {
		case err != nil:
		case p != "":
			s.exact[net.JoinHostPort(host, p)] = true
		case port != "":
			s.exact[net.JoinHostPort(host, port)] = true
		default:
			s.any[host] = true
		}
	}
	return s
}

// has reports whether a request's Host, as the client sent it, names this
// executor. A Host without a port is on the scheme's default one.
func (s *hostSet) has(hostHeader string, tls bool) bool {
	host, port, err := net.SplitHostPort(hostHeader)
	if err != nil {
		host, port = strings.Trim(hostHeader, "[]"), "80"
		if tls {
			port = "443"
		}
	}
	host = strings.ToLower(host)
	return s.exact[net.JoinHostPort(host, port)] || s.any[host]
}

// listenNames are the names an executor listening on addr is reached by:
// the address itself; the loopback names when it listens on loopback or on
// every interface; the interfaces' addresses when on every interface; and
// the machine's host name.
func listenNames(addr net.Addr) (names []string, port string) {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return []string{addr.String()}, ""
	}
	port = strconv.Itoa(tcp.Port)
	names = []string{tcp.IP.String()}
	if tcp.IP.IsLoopback() || tcp.IP.IsUnspecified() {
		names = append(names, "localhost", "127.0.0.1", "::1")
	}
	if tcp.IP.IsUnspecified() {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if ipn, ok := a.(*net.IPNet); ok {
					names = append(names, ipn.IP.String())
				}
			}
		}
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		names = append(names, h)
	}
	return names, port
}

// listenOn makes s take v2 signatures for the names it is reached by on
// addr, beside Options.Hosts (bare ones on addr's port).
func (s *Server) listenOn(addr net.Addr) {
	names, port := listenNames(addr)
	s.hosts.Store(newHostSet(append(names, s.opts.Hosts...), port))
}

// connKey is the context key of a request's connection in Serve.
type connKey struct{}

// authenticated marks the request's connection as authenticated: the
// listener no longer closes it to make room for a new one.
func authenticated(r *http.Request) {
	if c, ok := r.Context().Value(connKey{}).(*limitConn); ok {
		c.authenticate()
	}
}

func withConn(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitConn); ok {
		return context.WithValue(ctx, connKey{}, lc)
	}
	return ctx
}
