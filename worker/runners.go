package worker

import (
	"context"
	"runtime/debug"
	"sync"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"
)

// runners run eval attempts on goroutines that outlive them. Asynq starts a
// goroutine for every task, and a goroutine's stack starts small: an
// attempt's calls (payload decoding, the acquire, the executor call, the
// release) grow it by copying, several times, on every attempt. Measured end
// to end, that copying was a tenth of the Go CPU an eval costs; a runner's
// stack stays grown from one attempt to the next. Asynq's goroutine waits
// for the attempt and returns what it returned, or panics with its panic.
//
// There are as many runners as the worker runs evals at once. An attempt
// that finds none parked (none started, as when Handler serves another
// server, or the worker stopping) runs on Asynq's goroutine, as it would
// without them.
type runners struct {
	jobs chan runJob
	quit chan struct{}
	log  zerolog.Logger
}

type runJob struct {
	ctx  context.Context
	task *asynq.Task
	run  func(context.Context, *asynq.Task) error
	done chan runDone
}

// runDone is how an attempt ended: its error, or its panic's value.
type runDone struct {
	err      error
	panicked bool
	value    any
}

// startRunners starts n runners; stop stops them, those running an
// attempt once it ends.
func startRunners(n int, log zerolog.Logger) (r *runners, stop func()) {
	r = &runners{jobs: make(chan runJob), quit: make(chan struct{}), log: log}
	for range n {
		go r.loop()
	}
	var once sync.Once
	return r, func() { once.Do(func() { close(r.quit) }) }
}

func (r *runners) loop() {
	for {
		select {
		case j := <-r.jobs:
			j.done <- r.runOne(j)
		case <-r.quit:
			return
		}
	}
}

// runOne runs one attempt and catches its panic, whose stack is logged
// here: Asynq's own report of it, made after the panic is raised again on
// its goroutine, shows that goroutine's stack, not the attempt's.
func (r *runners) runOne(j runJob) (d runDone) {
	defer func() {
		if x := recover(); x != nil {
			r.log.Error().Interface("panic", x).Bytes("stack", debug.Stack()).Msg("task panicked")
			d = runDone{panicked: true, value: x}
		}
	}()
	return runDone{err: j.run(j.ctx, j.task)}
}

// on returns h running on a runner when one is parked, else on the caller's
// goroutine. r may be nil: h runs on the caller's.
func (r *runners) on(h func(context.Context, *asynq.Task) error) func(context.Context, *asynq.Task) error {
	return func(ctx context.Context, t *asynq.Task) error {
		if r == nil {
			return h(ctx, t)
		}
		done := make(chan runDone, 1) // the runner never waits for a caller that left
		select {
		case r.jobs <- runJob{ctx: ctx, task: t, run: h, done: done}:
		default:
			return h(ctx, t)
		}
		d := <-done
		if d.panicked {
			panic(d.value)
		}
		return d.err
	}
}
