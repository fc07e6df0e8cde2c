package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/evalpool/evalpool/internal/evaltest"
	"github.com/evalpool/evalpool/refexec"
	"github.com/evalpool/evalpool/tasks"
)

// longOrShort is a reference executor command: ten seconds for a spec that
// says "long", at once for any other.
const longOrShort = `spec=$(cat); case "$spec" in *long*) sleep 10;; esac; echo '{"status":"passed"}'`

// A holder that runs past its lease, because its worker is paused or cut off
// from Redis, never overlaps the next holder: the executor stops the eval
// whose lease was not extended (or the worker cancels its own call first),
// and Redis hands the executor on only after the grace.
func TestHolderPastItsLeaseNeverOverlaps(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		fault func(w *exec.Cmd, p *evaltest.Proxy)
		heal  func(w *exec.Cmd, p *evaltest.Proxy)
	}{
		{"paused by SIGSTOP",
			func(w *exec.Cmd, _ *evaltest.Proxy) { _ = w.Process.Signal(syscall.SIGSTOP) },
			func(w *exec.Cmd, _ *evaltest.Proxy) { _ = w.Process.Signal(syscall.SIGCONT) }},
		{"cut off from Redis",
			func(_ *exec.Cmd, p *evaltest.Proxy) { p.Cut() },
			func(_ *exec.Cmd, p *evaltest.Proxy) { p.Heal() }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := evaltest.StartT(t, evaltest.Options{})
			url := srv.URL()
			proxy := evaltest.StartProxy(t, srv.Addr)
			cli := func(args ...string) result { return runCLI(t, url, "default", args...) }
			servers, urls := startExecutors(t, 1, refexec.Options{Exec: longOrShort})
			if r := cli("pool", "add", urls[0]); r.code != 0 {
				t.Fatalf("pool add: %+v", r)
			}
			holder := exec.Command(os.Args[0], "--redis", "redis://"+proxy.Addr+"/0", "worker",
				"--lease-ttl", "1s", "--poll-interval", "50ms", "--reap-interval", "1s")
			holder.Env = append(os.Environ(), "EVALPOOL_TEST_MAIN=1")
			holderLog := &evaltest.LogBuffer{}
			holder.Stderr = holderLog
			if err := holder.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tt.heal(holder, proxy); _ = holder.Process.Kill(); _ = holder.Wait() })

			long := strings.TrimSpace(cli("enqueue", "--spec", `{"long":true}`, "--max-retry", "0", "--timeout", "60s").stdout)
			evaltest.Eventually(t, 10*time.Second, "the long eval never reached the executor", func() bool { return servers[0].Stats().Running })
			tt.fault(holder, proxy)
			faulted := time.Now()

			startWorker(t, url, "--lease-ttl", "1s", "--poll-interval", "50ms", "--reap-interval", "1s", "--retry-delay", "10ms")
			r := cli("enqueue", "--spec", `{"short":true}`, "--count", "3", "--max-retry", "0", "--timeout", "60s", "--wait")
			if r.code != 0 {
				t.Fatalf("short evals after the fault: %+v", r)
			}
			t.Logf("3 short evals done %s after the holder's fault", time.Since(faulted).Round(time.Millisecond))
			st := servers[0].Stats()
			if st.Overlaps != 0 {
				t.Fatalf("executor stats %+v: the executor was double-booked", st)
			}

			tt.heal(holder, proxy)
			client := redis.NewClient(&redis.Options{Addr: srv.Addr})
			defer client.Close()
			insp := asynq.NewInspectorFromRedisClient(client)
			evaltest.Eventually(t, 30*time.Second, "the long eval never ended", func() bool {
				info, err := insp.GetTaskInfo(tasks.QueueEvals, long)
				return err == nil && (info.State == asynq.TaskStateArchived || info.State == asynq.TaskStateCompleted)
			})
			info, _ := insp.GetTaskInfo(tasks.QueueEvals, long)
			t.Logf("the long eval: %s %q; executor %+v", info.State, info.LastErr, servers[0].Stats())
			if info.State != asynq.TaskStateArchived || !strings.Contains(info.LastErr, "lease") {
				t.Errorf("the long eval ended %s with %q; want archived for its lost lease", info.State, info.LastErr)
			}
			evaltest.Eventually(t, 10*time.Second, "pool never whole again", func() bool {
				return cli("pool", "check").code == 0 && strings.Contains(cli("pool", "status", "--json").stdout, `"available": 1`)
			})
			if st := servers[0].Stats(); st.Overlaps != 0 {
				t.Fatalf("executor stats %+v after the holder came back: double-booked", st)
			}
		})
	}
}
