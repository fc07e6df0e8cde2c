package dashboard

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// ErrBadAllowedHost is returned by New for an entry of Options.AllowedHosts
// that is not a host name, a name with a port, or a leading-dot domain.
var ErrBadAllowedHost = errors.New("dashboard: bad allowed host")

// hostRule is one entry of Options.AllowedHosts.
type hostRule struct {
	name   string // lower case, no trailing dot; for a domain rule, without its leading dot
	port   string // "" for any port
	domain bool   // ".NAME": NAME and every name under it
}

// parseHostRule parses "NAME", "NAME:PORT", ".NAME", "[IPv6]" or
// "[IPv6]:PORT".
func parseHostRule(entry string) (hostRule, error) {
	bad := func(why string) (hostRule, error) {
		return hostRule{}, fmt.Errorf("%w %q: %s", ErrBadAllowedHost, entry, why)
	}
	s := entry
	if s == "" || strings.ContainsAny(s, "/@?#*\\ \t\r\n") {
		return bad("want NAME, NAME:PORT or .DOMAIN (no scheme, path or wildcard)")
	}
	var rule hostRule
	if rest, ok := strings.CutPrefix(s, "."); ok {
		rule.domain, s = true, rest
	}
	name, port := splitHost(s)
	if port != "" {
		if rule.domain {
			return bad("a .DOMAIN rule takes no port")
		}
		for _, c := range port {
			if c < '0' || c > '9' {
				return bad("the port is not a number")
			}
		}
	}
	if name == "" || strings.Contains(name, ":") && net.ParseIP(name) == nil {
		return bad("no host name")
	}
	rule.name, rule.port = name, port
	return rule, nil
}

// splitHost splits a Host header (or a rule) into its name, in lower case
// without a trailing dot or an IPv6 address's brackets, and its port ("" if
// none).
func splitHost(hostport string) (name, port string) {
	name = hostport
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		name, port = h, p
	} else if strings.HasPrefix(hostport, "[") && strings.HasSuffix(hostport, "]") {
		name = hostport[1 : len(hostport)-1]
	}
	return strings.TrimSuffix(strings.ToLower(name), "."), port
}

// hostAllowed reports whether a request's Host names this dashboard: a
// loopback name, or one of the rules. A request to another name is what a
// DNS rebinding page sends (its own name, resolved to this address), and
// it controls Origin as well, so the origin checks cannot tell.
func hostAllowed(rules []hostRule, r *http.Request) bool {
	name, port := splitHost(r.Host)
	if name == "" {
		return false
	}
	if name == "localhost" {
		return true
	}
	if ip := net.ParseIP(name); ip != nil && ip.IsLoopback() {
		return true
	}
	if port == "" {
		port = "80"
		if r.TLS != nil {
			port = "443"
		}
	}
	for _, rule := range rules {
		if rule.port != "" && rule.port != port {
			continue
		}
		if name == rule.name || rule.domain && strings.HasSuffix(name, "."+rule.name) {
			return true
		}
	}
	return false
}
