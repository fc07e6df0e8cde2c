package worker

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/evalpool/evalpool/internal/evaltest"
)

// onRunner reports whether the calling goroutine is a runner's.
func onRunner() bool {
	buf := make([]byte, 64<<10)
	return strings.Contains(string(buf[:runtime.Stack(buf, false)]), "(*runners).loop")
}

// runnersAlive counts the goroutines that are runners.
func runnersAlive() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "(*runners).loop")
}

func TestRunners(t *testing.T) {
	errAttempt := errors.New("attempt failed")
	tests := []struct {
		name       string
		runners    int // -1: no runners at all (Handler outside Run)
		attempt    func() error
		wantRunner bool
		wantErr    error
		wantPanic  any
	}{
		{name: "an attempt runs on a runner", runners: 2, attempt: func() error { return nil }, wantRunner: true},
		{name: "its error comes back", runners: 2, attempt: func() error { return errAttempt }, wantRunner: true, wantErr: errAttempt},
		{name: "its panic is raised again on the caller", runners: 2, attempt: func() error { panic("boom") }, wantRunner: true, wantPanic: "boom"},
		{name: "with none parked it runs on the caller", runners: 0, attempt: func() error { return errAttempt }, wantErr: errAttempt},
		{name: "without runners it runs on the caller", runners: -1, attempt: func() error { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r *runners
			if tt.runners >= 0 {
				var stop func()
				r, stop = startRunners(tt.runners, zerolog.Nop())
				t.Cleanup(stop)
				evaltest.Eventually(t, 5*time.Second, "the runners never parked", func() bool { return runnersAlive() >= tt.runners })
			}
			var ranOnRunner bool
			h := r.on(func(context.Context, *asynq.Task) error {
				ranOnRunner = onRunner()
				return tt.attempt()
			})
			var err error
			var panicked any
			func() {
				defer func() { panicked = recover() }()
				err = h(t.Context(), asynq.NewTask("t", nil))
			}()
			if ranOnRunner != tt.wantRunner {
				t.Errorf("ran on a runner: %v, want %v", ranOnRunner, tt.wantRunner)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if panicked != tt.wantPanic {
				t.Errorf("panic = %v, want %v", panicked, tt.wantPanic)
			}
		})
	}
}

// TestRunnersStop: stopped, the parked runners end, and an attempt after
// the stop still runs.
func TestRunnersStop(t *testing.T) {
	before := runnersAlive()
	r, stop := startRunners(4, zerolog.Nop())
	evaltest.Eventually(t, 5*time.Second, "the runners never started", func() bool { return runnersAlive() == before+4 })
	stop()
	stop() // twice is once
	evaltest.Eventually(t, 5*time.Second, "stopped runners are still there", func() bool { return runnersAlive() == before })
	ran := false
	if err := r.on(func(context.Context, *asynq.Task) error { ran = true; return nil })(t.Context(), asynq.NewTask("t", nil)); err != nil || !ran {
		t.Fatalf("an attempt after the stop: ran %v, err %v", ran, err)
	}
}

// TestWorkerRunners: a running worker has a runner for each eval it may run
// at once, and a stopped one has none left.
func TestWorkerRunners(t *testing.T) {
	w, _ := setup(t, Config{Concurrency: 3})
	before := runnersAlive()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	evaltest.Eventually(t, 10*time.Second, "the worker's runners never started", func() bool { return runnersAlive() == before+3 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	evaltest.Eventually(t, 5*time.Second, "a stopped worker left runners", func() bool { return runnersAlive() == before })
}
