package evaltest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/evalpool/evalpool/internal/keys"
)

// EnvURL names the environment variable that points tests at an existing
// Redis instead of starting one.
const EnvURL = "EVALPOOL_TEST_REDIS_URL"

// Options configure a server started by Start.
type Options struct {
	// Args are extra redis-server arguments, e.g. "--appendonly", "yes".
	Args []string
	// Dir is the server's working directory (AOF, RDB, log). Defaults to a
	// new temporary directory, removed by Close.
	Dir string
	// Config is the text of a redis.conf, written to Dir and given to the
	// server before the arguments. A Sentinel needs one: it saves its state
	// there.
	Config string
	// TLS, when set, makes the server serve TLS only, on its port (Args name
	// the certificate files; see StartTLS), and Start checks that it is up
	// over TLS with this client configuration.
	TLS *tls.Config
	// SteppableClock runs the server under a shim (testdata/clockshim.c,
	// built with gcc) whose wall clock Server.StepClock steps.
	SteppableClock bool
}

// Server is a redis-server process owned by a test.
type Server struct {
	Addr string

	opts    Options
	tempDir bool
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Start runs redis-server on a free loopback port and waits until it answers
// PING. Persistence is off unless Options.Args turns it on.
func Start(opts Options) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("evaltest: redis-server not found in PATH (install it: apt-get install redis-server, or brew install redis; or set %s to a Redis to use): %w", EnvURL, err)
	}
	s := &Server{opts: opts}
	if s.opts.Dir == "" {
		dir, err := os.MkdirTemp("", "evalpool-redis-")
		if err != nil {
			return nil, fmt.Errorf("evaltest: %w", err)
		}
		s.opts.Dir, s.tempDir = dir, true
	}
	if s.opts.Config != "" {
		if err := os.WriteFile(s.configFile(), []byte(s.opts.Config), 0o600); err != nil {
			s.removeDir()
			return nil, fmt.Errorf("evaltest: %w", err)
		}
	}
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = s.run(bin); lastErr == nil {
			return s, nil
		}
	}
	s.removeDir()
	return nil, lastErr
}

func (s *Server) run(bin string) error {
	_, port, _ := net.SplitHostPort(s.Addr)
	args := []string{"--port", port}
	if s.opts.TLS != nil {
		args = []string{"--port", "0", "--tls-port", port}
	}
	if s.opts.Config != "" {
		args = append([]string{s.configFile()}, args...)
	}
	args = append(args, "--bind", "127.0.0.1", "--dir", s.opts.Dir,
		"--save", "", "--appendonly", "no", "--logfile", "redis.log")
	args = append(args, s.opts.Args...)
	cmd := exec.Command(bin, args...)
	if s.opts.SteppableClock {
		env, err := clockEnv(s.stepFile())
		if err != nil {
			return err
		}
		cmd.Env = env
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	ownGroup(cmd.SysProcAttr)
	setDeathSignal(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("evaltest: start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	if err := s.waitReady(10 * time.Second); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("evaltest: redis-server on %s did not start: %w; log: %s", s.Addr, err, s.logTail())
	}
	return nil
}

func (s *Server) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second, TLSConfig: s.opts.TLS})
	defer c.Close()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := c.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		select {
		case <-s.exited:
			return errors.New("process exited")
		case <-ctx.Done():
			return err
		case <-tick.C:
		}
	}
}

func (s *Server) configFile() string { return filepath.Join(s.opts.Dir, "redis.conf") }

// Client is a client of the server's, closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// URL is the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Kill ends the server with SIGKILL, as a crash would, and waits for it.
func (s *Server) Kill() error { return s.signal(syscall.SIGKILL) }

// Stop ends the server with SIGTERM (a clean shutdown) and waits for it.
func (s *Server) Stop() error { return s.signal(syscall.SIGTERM) }

func (s *Server) signal(sig syscall.Signal) error {
	select {
	case <-s.exited:
		return nil
	default:
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("evaltest: signal redis-server: %w", err)
	}
	<-s.exited
	return nil
}

// Restart starts the server again on the same port and directory, so that a
// server with AOF on comes back with its data.
func (s *Server) Restart() error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("evaltest: %w", err)
	}
	return s.run(bin)
}

// Close stops the server and removes its temporary directory.
func (s *Server) Close() error {
	err := s.Kill()
	s.removeDir()
	return err
}

func (s *Server) removeDir() {
	if s.tempDir {
		_ = os.RemoveAll(s.opts.Dir)
	}
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.opts.Dir, "redis.log"))
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-5):], " | ")
}

// FreeAddr returns a loopback address nothing listens on yet, for a process
// the test starts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("evaltest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartT is Start for one test: the server is closed when the test ends.
func StartT(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var shared struct {
	once    sync.Once
	server  *Server
	url     string
	err     error
	clients []*redis.Client
}

// URL returns the package's shared Redis: EVALPOOL_TEST_REDIS_URL if set,
// else a server started on first use and stopped by Main.
func URL(t testing.TB) string {
	t.Helper()
	u, err := sharedURL()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func sharedURL() (string, error) {
	shared.once.Do(func() {
		if shared.url = os.Getenv(EnvURL); shared.url != "" {
			return
		}
		shared.server, shared.err = Start(Options{})
		if shared.err == nil {
			shared.url = shared.server.URL()
		}
	})
	return shared.url, shared.err
}

// ExampleClient is Client for Example functions, which have no testing.T:
// it panics when there is no Redis, and the client lives as long as the
// package's tests.
func ExampleClient() *redis.Client {
	u, err := sharedURL()
	if err != nil {
		panic(err)
	}
	opt, err := redis.ParseURL(u)
	if err != nil {
		panic(err)
	}
	c := redis.NewClient(opt)
	shared.clients = append(shared.clients, c)
	return c
}

// Client returns a client of the package's shared Redis, closed when the test
// ends.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(URL(t))
	if err != nil {
		t.Fatalf("evaltest: %s: %v", EnvURL, err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// Pool returns a pool name no other test uses and deletes the pool's keys from
// c when the test ends, so tests can share one Redis and run in parallel.
func Pool(t testing.TB, c redis.UniversalClient) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := unsafeName.ReplaceAllString(t.Name(), "_") + "-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, keys.ForPool(name).Pattern(), 1000).Iterator()
		for iter.Next(ctx) {
			_ = c.Del(ctx, iter.Val()).Err()
		}
	})
	return name
}

// Main runs a package's tests, stops the shared server, and fails the run if
// a test left goroutines behind. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	for _, c := range shared.clients {
		_ = c.Close()
	}
	if shared.server != nil {
		_ = shared.server.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
