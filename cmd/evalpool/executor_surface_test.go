package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/executor"
	"github.com/evalpool/evalpool/internal/evaltest"
)

// Without a secret the executor listens on loopback only, and says it has
// none; beyond loopback it refuses to start (exit 2) with one line that
// says how to set one, as the dashboard does without a token. Its startup
// line names the --exec program, never the command line, which may carry
// a key. (Not parallel: it sets the environment.)
func TestExecutorListenNeedsASecret(t *testing.T) {
	const key = "sk-live-0123456789abcdef"
	exec := []string{"--exec", "GRADER_API_KEY=" + key + " /opt/grader/bin/grade --token " + key}
	tests := []struct {
		name   string
		secret string
		args   []string
		code   int    // -1: serves
		stderr string // says
	}{
		{"all interfaces, no secret", "", []string{"--listen", "0.0.0.0:0"}, exitUsage, "is not a loopback address and there is no secret"},
		{"empty host, no secret", "", []string{"--listen", ":0"}, exitUsage, executor.EnvSecret},
		{"loopback, no secret", "", []string{"--listen", "127.0.0.1:0"}, -1, "executor has no secret"},
		{"localhost, no secret", "", []string{"--listen", "localhost:0"}, -1, "executor has no secret"},
		{"the compose file's default secret", "change-me", []string{"--listen", "127.0.0.1:0"}, exitUsage, "publishes"},
		{"a short secret", "x7q2z-fleet", []string{"--listen", "127.0.0.1:0"}, exitUsage, "shorter than 16"},
		{"all interfaces, secret", "s3cret-of-the-fleet", []string{"--listen", "0.0.0.0:0", "--allowed-hosts", "executor-1"}, -1, "executor listening"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(executor.EnvSecret, tt.secret)
			logs := &evaltest.LogBuffer{}
			ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
			defer cancel()
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, append(append([]string{"executor"}, tt.args...), exec...), &bytes.Buffer{}, logs)
			}()
			if tt.code != -1 {
				select {
				case code := <-done:
					out := strings.TrimSpace(logs.String())
					if code != tt.code || !strings.Contains(out, tt.stderr) || strings.Count(out, "\n") > 0 {
						t.Fatalf("exit %d, stderr %q; want %d and one line saying %q", code, out, tt.code, tt.stderr)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the executor started")
				}
				return
			}
			evaltest.Eventually(t, 10*time.Second, "the executor never said it listens", func() bool { return strings.Contains(logs.String(), "executor listening") })
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("exit %d: %s", code, lastLines(logs.String(), 3))
			}
			out := logs.String()
			if !strings.Contains(out, tt.stderr) || !strings.Contains(out, "grade (arguments not logged)") || strings.Contains(out, key) || strings.Contains(out, "GRADER_API_KEY") {
				t.Fatalf("log %q: want it to say %q and name the program alone", out, tt.stderr)
			}
		})
	}
}
