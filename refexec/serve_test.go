package refexec

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evalpool/evalpool/internal/evaltest"

	"github.com/evalpool/evalpool/executor"
)

// serveOn serves srv on a loopback listener until the test ends, and
// returns its URL.
func serveOn(t *testing.T, srv interface {
	Serve(context.Context, net.Listener) error
}) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	return "http://" + l.Addr().String()
}

func TestLimitListener(t *testing.T) {
	t.Parallel()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newLimitListener(inner, 2)
	defer l.Close()
	for range 3 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	var open []net.Conn
	for range 2 {
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		c.(*limitConn).authenticate()
	}
	third := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(third)
			return
		}
		third <- c
	}()
	select {
	case <-third:
		t.Fatal("a third connection was accepted while two were open")
	case <-time.After(100 * time.Millisecond): // showing that something does not happen takes a wait
	}
	_ = open[0].Close()
	_ = open[0].Close() // a second close gives back no second slot
	select {
	case c, ok := <-third:
		if !ok {
			t.Fatal("Accept failed")
		}
		defer c.Close()
		open[0] = c // not authenticated
	case <-time.After(5 * time.Second):
		t.Fatal("closing a connection did not let the next in")
	}
	// The cap is reached, with one connection not authenticated: the next
	// one closes it and takes its place.
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fourth, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer fourth.Close()
	if _, err := open[0].Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the unauthenticated connection was not closed for the next: read = %v", err)
	}
	_ = open[1].Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close = %v", err)
	}
}

// An eval outlives Serve's ReadTimeout: the timeout bounds reading the
// request, not running it. And a caller that leaves is still seen leaving.
func TestEvalOutlivesReadTimeout(t *testing.T) {
	t.Parallel()
	s, err := New(Options{Latency: 600 * time.Millisecond, ReadTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	url := serveOn(t, s)
	c := &executor.Client{}
	res, err := c.Run(t.Context(), url, executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`), LeaseMs: 10_000})
	if err != nil || res.Status != executor.StatusPassed {
		t.Fatalf("Run = %+v, %v; want a pass six read timeouts later", res, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Run(ctx, url, executor.Request{EvalID: "e", Fence: 2, Spec: []byte(`{}`)})
		errc <- err
	}()
	evaltest.Eventually(t, 5*time.Second, "second eval never started", func() bool { return s.Stats().MaxFence == 2 })
	cancel()
	<-errc
	evaltest.Eventually(t, 5*time.Second, "the server never saw the caller leave", func() bool { return !s.Stats().Running })
}

// Serve returns once its context ends, cutting evals that outlast the
// shutdown timeout.
func TestServeShutdown(t *testing.T) {
	t.Parallel()
	f, err := NewFleet(2, Options{Latency: time.Hour, ShutdownTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- f.Serve(ctx, l) }()
	ran := make(chan error, 1)
	go func() {
		_, err := (&executor.Client{}).Run(t.Context(), "http://"+l.Addr().String()+FleetPath(1), executor.Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)})
		ran <- err
	}()
	evaltest.Eventually(t, 5*time.Second, "eval never started", func() bool { return f.Stats().Running })
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve = %v, want nil after its context ended", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running 5s after its context ended")
	}
	if err := <-ran; err == nil {
		t.Fatal("the eval cut at shutdown answered")
	}
	evaltest.Eventually(t, 5*time.Second, "eval still running after shutdown", func() bool { return !f.Stats().Running })
}

// unread fails the test that reads it: a body that must be refused unread.
type unread struct{ t *testing.T }

func (u unread) Read([]byte) (int, error) {
	u.t.Error("the body was read")
	return 0, io.ErrUnexpectedEOF
}

func TestRequestSize(t *testing.T) {
	t.Parallel()
	// fill pads an eval's spec so that its body is n bytes long.
	fill := func(n int) string {
		head, tail := `{"eval_id":"e","fence":1,"spec":"`, `"}`
		return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
	}
	tests := []struct {
		name   string
		body   func(t *testing.T) (io.Reader, int64) // the body, and its Content-Length (-1: unknown)
		secret []byte
		want   int
	}{
		{"announced over the limit", func(t *testing.T) (io.Reader, int64) { return unread{t}, executor.MaxRequestBytes + 1 }, nil, http.StatusRequestEntityTooLarge},
		{"announced over the limit, unsigned", func(t *testing.T) (io.Reader, int64) { return unread{t}, 9 << 20 }, testSecret, http.StatusUnauthorized},
		{"unannounced over the limit", func(*testing.T) (io.Reader, int64) {
			return strings.NewReader(fill(executor.MaxRequestBytes + 1)), -1
		}, nil, http.StatusRequestEntityTooLarge},
		{"unannounced, huge", func(*testing.T) (io.Reader, int64) {
			return io.MultiReader(strings.NewReader(`{"eval_id":"e","fence":1,"spec":"`), neverEnding('x')), -1
		}, nil, http.StatusRequestEntityTooLarge},
		{"announced, at the limit", func(*testing.T) (io.Reader, int64) {
			return strings.NewReader(fill(executor.MaxRequestBytes)), executor.MaxRequestBytes
		}, nil, http.StatusOK},
		{"unannounced, at the limit", func(*testing.T) (io.Reader, int64) { return strings.NewReader(fill(executor.MaxRequestBytes)), -1 }, nil, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := New(Options{Secret: tt.secret})
			if err != nil {
				t.Fatal(err)
			}
			body, length := tt.body(t)
			req := httptest.NewRequest(http.MethodPost, executor.PathEvals, body)
			req.Header.Set("Content-Type", "application/json")
			req.ContentLength = length
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("%d %s, want %d", rec.Code, executor.Snippet(rec.Body.Bytes()), tt.want)
			}
			if st := s.Stats(); tt.want != http.StatusOK && st.MaxFence != 0 {
				t.Fatalf("a refused request moved the fence: %+v", st)
			}
		})
	}
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// flood sends n requests at once from raw connections and reports how each
// ended: "408", "413", "closed" (no answer), or "stuck" (no answer within
// guard: the server never cut it off). send writes a request, and returns
// when it is sent, fails, or answered is closed.
func flood(t *testing.T, addr string, n int, guard time.Duration, send func(i int, c net.Conn, answered <-chan struct{})) map[string]int {
	t.Helper()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		outcomes = map[string]int{}
	)
	for i := range n {
		wg.Go(func() {
			outcome := "closed"
			defer func() {
				mu.Lock()
				defer mu.Unlock()
				outcomes[outcome]++
			}()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				outcome = "dial failed"
				return
			}
			defer c.Close()
			// A small send buffer: a client waiting in the backlog does not
			// push megabytes into the kernel meanwhile.
			_ = c.(*net.TCPConn).SetWriteBuffer(64 << 10)
			_ = c.SetReadDeadline(time.Now().Add(guard))
			answered := make(chan struct{})
			var writer sync.WaitGroup
			writer.Go(func() { send(i, c, answered) })
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			close(answered)
			_ = c.SetWriteDeadline(time.Now()) // unblock a write stuck on a full buffer
			writer.Wait()
			var netErr net.Error
			switch {
			case err == nil:
				resp.Body.Close()
				outcome = strconv.Itoa(resp.StatusCode)
			case errors.As(err, &netErr) && netErr.Timeout():
				outcome = "stuck"
			}
		})
	}
	wg.Wait()
	return outcomes
}

// heapPeak samples the heap until stop is called, and returns by how much
// its peak exceeded the heap at the start.
func heapPeak() (stop func() int64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	done, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() int64 {
		close(done)
		<-sampled
		return int64(peak) - int64(base)
	}
}

// 300 clients sending 9 MB bodies, and 300 trickling theirs, at a server
// capped at 32 connections: the huge bodies are refused, the trickles cut at
// the read timeout, the heap stays small, and the executor still runs evals
// afterwards. Without the connection cap or the body limit the heap grows
// past the bound; without the read timeout the trickles are never cut.
//
// Not parallel: it measures the whole process's heap.
func TestBoundedResources(t *testing.T) {
	const clients = 300
	t.Run("huge bodies", func(t *testing.T) {
		const hugeBytes = 9 << 20
		// A body timeout of a minute and the default read timeout, 30s: they
		// do not cut these short, so only the cap and the body limit bound
		// the heap.
		s, err := New(Options{MaxConns: 32, BodyTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		url := serveOn(t, s)
		chunk := bytes.Repeat([]byte("x"), 32<<10) // shared: the clients allocate next to nothing
		stop := heapPeak()
		outcomes := flood(t, strings.TrimPrefix(url, "http://"), clients, time.Minute, func(i int, c net.Conn, answered <-chan struct{}) {
			chunked := i%2 == 1
			header := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", executor.PathEvals, hugeBytes)
			if chunked {
				header = fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", executor.PathEvals)
			}
			if _, err := io.WriteString(c, header); err != nil {
				return
			}
			for sent := 0; sent < hugeBytes; sent += len(chunk) {
				select {
				case <-answered:
					return
				default:
				}
				var err error
				if chunked {
					_, err = fmt.Fprintf(c, "%x\r\n%s\r\n", len(chunk), chunk)
				} else {
					_, err = c.Write(chunk)
				}
				if err != nil {
					return
				}
			}
		})
		checkFlood(t, stop(), outcomes, "413", clients)
		afterFlood(t, s, url)
	})
	t.Run("slow bodies", func(t *testing.T) {
		s, err := New(Options{MaxConns: 32, ReadTimeout: 200 * time.Millisecond, ReadHeaderTimeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		url := serveOn(t, s)
		stop := heapPeak()
		// 300 trickles, 32 at a time, 200ms each: 2s. A client still
		// waiting after 20s was not cut off at the read timeout.
		outcomes := flood(t, strings.TrimPrefix(url, "http://"), clients, 20*time.Second, func(_ int, c net.Conn, answered <-chan struct{}) {
			if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", executor.PathEvals); err != nil {
				return
			}
			tick := time.NewTicker(50 * time.Millisecond) // the trickle's pace: 100 kB take 83 minutes
			defer tick.Stop()
			for {
				select {
				case <-answered:
					return
				case <-tick.C:
				}
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		})
		checkFlood(t, stop(), outcomes, "408", clients)
		afterFlood(t, s, url)
	})
}

// heapBound is how much a flood may grow the heap.
const heapBound = 200 << 20

// checkFlood checks a flood's bill: the heap grew less than heapBound, and
// every client was refused, most with the status code want.
func checkFlood(t *testing.T, growth int64, outcomes map[string]int, want string, clients int) {
	t.Helper()
	t.Logf("heap peak growth %d MiB; outcomes %v", growth>>20, outcomes)
	if growth > heapBound {
		t.Errorf("heap grew by %d MiB, want under %d MiB", growth>>20, heapBound>>20)
	}
	// The first connections in are answered; those that came while the cap
	// was reached closed the oldest not yet authenticated to take its
	// place, and were closed in turn.
	if outcomes[want] == 0 || outcomes[want]+outcomes["closed"] != clients {
		t.Errorf("outcomes %v: want every client refused, closed or with a %s", outcomes, want)
	}
}

// afterFlood checks that a flood changed nothing and the executor still
// runs evals.
func afterFlood(t *testing.T, s *Server, url string) {
	t.Helper()
	if st := s.Stats(); st != (Stats{}) {
		t.Errorf("stats after the flood = %+v, want untouched", st)
	}
	res, err := (&executor.Client{}).Run(t.Context(), url, executor.Request{EvalID: "after", Fence: 1, Spec: []byte(`{}`)})
	if err != nil || res.Status != executor.StatusPassed {
		t.Fatalf("eval after the flood: %+v, %v", res, err)
	}
}
