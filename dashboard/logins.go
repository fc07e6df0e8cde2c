package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"math"
	"net"
	"sync"
	"time"
)

// Limits of the token checks that fail (a wrong token posted to /login or
// sent as a bearer): each takes one from its client's bucket and one from
// every client's; while either is empty, a request that carries a token is
// refused (429) before the token is looked at, so that a guess tells
// nothing. A right token takes nothing, and a session cookie is never
// limited.
const (
	// FailedLoginBurst wrong tokens from one client (IP address, or IPv6
	// /64) at once, then one every FailedLoginEvery.
	FailedLoginBurst = 10
	FailedLoginEvery = 6 * time.Second
	// FailedLoginGlobalBurst wrong tokens from all clients together at
	// once, then one every FailedLoginGlobalEvery.
	FailedLoginGlobalBurst = 100
	FailedLoginGlobalEvery = 500 * time.Millisecond
	// MaxSessions bounds the sessions held; past it a login ends the one
	// nearest its expiry.
	MaxSessions = 10000
	// maxLimitedClients bounds the clients' buckets held; past it a new
	// client is limited by the global bucket alone.
	maxLimitedClients = 10000
)

// bucket is a token bucket: burst tokens, one more every interval.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) fill(now time.Time, burst int, every time.Duration) {
	b.tokens = math.Min(float64(burst), b.tokens+float64(now.Sub(b.last))/float64(every))
	b.last = now
}

// wait is how long until the bucket holds a token again.
func (b *bucket) wait(every time.Duration) time.Duration {
	return time.Duration((1 - b.tokens) * float64(every))
}

// limiter holds the failed token checks' buckets.
type limiter struct {
	// The limits: the constants (tests change them).
	burst, globalBurst int
	every, globalEvery time.Duration

	mu      sync.Mutex
	global  bucket
	clients map[string]*bucket
}

func newLimiter(now time.Time) *limiter {
	return &limiter{
		burst: FailedLoginBurst, every: FailedLoginEvery, globalBurst: FailedLoginGlobalBurst, globalEvery: FailedLoginGlobalEvery,
		global: bucket{tokens: FailedLoginGlobalBurst, last: now}, clients: map[string]*bucket{},
	}
}

// clientKey is the bucket's key of a request's remote address: its IP, an
// IPv6 address by its /64 (a client is given a whole one).
func clientKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if ip.To4() == nil {
		ip = ip.Mask(net.CIDRMask(64, 128))
	}
	return ip.String()
}

// take takes a token from the client's bucket and the global one for a
// token check, to be given back by refund if the token was right. When
// either is empty it takes none and says how long to wait.
func (l *limiter) take(now time.Time, client string) (ok bool, retry time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.global.fill(now, l.globalBurst, l.globalEvery)
	b := l.clients[client]
	if b == nil {
		l.prune(now)
		b = &bucket{tokens: float64(l.burst), last: now}
		if len(l.clients) < maxLimitedClients {
			l.clients[client] = b
		}
	}
	b.fill(now, l.burst, l.every)
	switch {
	case b.tokens < 1:
		return false, b.wait(l.every)
	case l.global.tokens < 1:
		return false, l.global.wait(l.globalEvery)
	}
	b.tokens--
	l.global.tokens--
	return true, 0
}

func (l *limiter) refund(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.global.tokens = math.Min(float64(l.globalBurst), l.global.tokens+1)
	if b := l.clients[client]; b != nil {
		b.tokens = math.Min(float64(l.burst), b.tokens+1)
	}
}

// prune drops the buckets that are full again, when the map is full.
func (l *limiter) prune(now time.Time) {
	if len(l.clients) < maxLimitedClients {
		return
	}
	for k, b := range l.clients {
		if b.fill(now, l.burst, l.every); b.tokens >= float64(l.burst) {
			delete(l.clients, k)
		}
	}
}

// sessions are the logins' sessions, by the SHA-256 of their cookie's
// value (a random ID), held in memory: a logout ends its session for good,
// and a restart ends them all.
type sessions struct {
	mu     sync.Mutex
	expiry map[[sha256.Size]byte]time.Time
}

// create makes a session valid until expiry and returns its cookie's
// value.
func (s *sessions) create(now, expiry time.Time) string {
	var id [32]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	v := base64.RawURLEncoding.EncodeToString(id[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.expiry) >= MaxSessions {
		var nearest [sha256.Size]byte
		first := true
		for k, e := range s.expiry {
			if !now.Before(e) {
				delete(s.expiry, k)
				continue
			}
			if first || e.Before(s.expiry[nearest]) {
				nearest, first = k, false
			}
		}
		if len(s.expiry) >= MaxSessions {
			delete(s.expiry, nearest)
		}
	}
	s.expiry[sha256.Sum256([]byte(v))] = expiry
	return v
}

// valid reports whether the cookie's value is a session not yet expired.
func (s *sessions) valid(now time.Time, v string) bool {
	k := sha256.Sum256([]byte(v))
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.expiry[k]
	if ok && !now.Before(e) {
		delete(s.expiry, k)
		return false
	}
	return ok
}

// end ends the session of the cookie's value, if there is one.
func (s *sessions) end(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.expiry, sha256.Sum256([]byte(v)))
}
