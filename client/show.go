package client

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/hibiken/asynq"

	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// Detail is an eval as `evalpool eval show` and GET /api/v1/evals/{id}
// show it: what it was asked (its spec), where it stands, and its attempts.
type Detail struct {
	EvalID string `json:"eval_id"`
	// State is Asynq's: pending, active, scheduled, retry, archived or
	// completed.
	State string `json:"state"`
	// Outcome is how it ended (passed, failed, errored, cancelled); empty
	// while it has not.
	Outcome string `json:"outcome,omitempty"`
	// Reason says in one line why it failed or errored (run.Record.Reason);
	// while it has not ended, its last failed attempt's error.
	Reason string `json:"reason,omitempty"`
	// Retried counts its failed attempts, of at most MaxRetry; LastError
	// is the last one's.
	Retried   int    `json:"retried"`
	LastError string `json:"last_error,omitempty"`
	// Result is its final attempt's tasks.EvalResult, once it ended with
	// one.
	Result   json.RawMessage   `json:"result,omitempty"`
	Pool     string            `json:"pool,omitempty"`
	Run      string            `json:"run,omitempty"`
	Key      string            `json:"key,omitempty"`
	Spec     json.RawMessage   `json:"spec,omitempty"`
	Require  map[string]string `json:"require,omitempty"`
	Group    string            `json:"group,omitempty"`
	Epoch    int               `json:"epoch,omitempty"`
	TimeoutS int64             `json:"timeout_s,omitempty"`
	MaxRetry int               `json:"max_retry"`
	// Attempts are those that can be told, oldest first: the final
	// attempt, from the task's result or its run's record, and before it
	// the last failed one, whose error and time Asynq keeps (Retried
	// counts them all). A plain eval's times are to the second, as Asynq keeps them.
	Attempts []Attempt `json:"attempts"`
}

// Outcomes of an attempt besides an eval's: it failed and the eval was
// tried again, or it runs now.
const (
	AttemptRetried = "retried"
	AttemptRunning = "running"
)

// Attempt is one attempt of an eval.
type Attempt struct {
	// Attempt counts from 0, the first.
	Attempt  int        `json:"attempt"`
	Executor string     `json:"executor,omitempty"`
	Started  *time.Time `json:"started_at,omitempty"`
	Ended    *time.Time `json:"ended_at,omitempty"`
	Duration float64    `json:"duration_seconds,omitempty"`
	// Outcome is the eval's (passed, failed, errored, cancelled) for the
	// final attempt, else AttemptRetried or AttemptRunning.
	Outcome  string             `json:"outcome"`
	Error    string             `json:"error,omitempty"`
	Score    *float64           `json:"score,omitempty"`
	Metrics  map[string]float64 `json:"metrics,omitempty"`
	ExitCode *int               `json:"exit_code,omitempty"`
	Output   json.RawMessage    `json:"output,omitempty"`
	Stdout   string             `json:"stdout,omitempty"`
	Stderr   string             `json:"stderr,omitempty"`
}

// queuedDetail is a run's eval that waits for admission: its spec, and no
// attempt yet.
func queuedDetail(id string, spec []byte) Detail {
	d := Detail{EvalID: id, State: StateQueued, Attempts: []Attempt{}}
	if e, err := tasks.ParseEval(spec); err == nil {
		d.Pool, d.Run, d.Key, d.Spec, d.Require, d.TimeoutS = e.Pool, e.Run, e.Key, e.Spec, e.Require, e.TimeoutS
		d.Group, d.Epoch = e.Group, e.Epoch
	}
	return d
}

// Show reads an eval of a pool: its task in Asynq and, for a run's eval,
// its run's record (runs may be nil for plain evals).
func Show(ctx context.Context, insp *asynq.Inspector, runs *run.Store, pool, id string) (Detail, error) {
	info, err := Lookup(insp, pool, id)
	if errors.Is(err, ErrEvalNotFound) {
		if spec, queued := waiting(ctx, runs, id); queued {
			return queuedDetail(id, spec), nil
		}
	}
	if err != nil {
		return Detail{}, err
	}
	d := Detail{EvalID: id, State: stateOf(info), Retried: info.Retried, LastError: info.LastErr, MaxRetry: max(0, info.MaxRetry-tasks.NoExecutorReserve), Attempts: []Attempt{}}
	e, perr := tasks.ParseEval(info.Payload)
	if perr == nil {
		d.Pool, d.Run, d.Key, d.Spec, d.Require, d.TimeoutS = e.Pool, e.Run, e.Key, e.Spec, e.Require, e.TimeoutS
		d.Group, d.Epoch = e.Group, e.Epoch
	}
	final, ok, err := finalAttempt(ctx, runs, info, e)
	if err != nil {
		return Detail{}, err
	}
	// Asynq's last error is an archived eval's final attempt's; otherwise
	// that of the attempt before the one that ran last or runs now.
	if info.Retried > 0 && info.LastErr != "" && info.State != asynq.TaskStateArchived {
		d.Attempts = append(d.Attempts, Attempt{Attempt: info.Retried - 1, Outcome: AttemptRetried, Error: info.LastErr, Ended: timeOf(info.LastFailedAt)})
	}
	switch {
	case ok:
		d.Outcome, d.Reason = final.Status, final.Reason()
		d.Attempts = append(d.Attempts, attemptOf(final))
		switch {
		case len(info.Result) > 0 && json.Valid(info.Result):
			d.Result = info.Result
		case info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived:
			d.Result, err = json.Marshal(resultOf(id, final))
		}
	case info.State == asynq.TaskStateArchived:
		d.Outcome, d.Reason = run.Errored, info.LastErr
		d.Attempts = append(d.Attempts, Attempt{Attempt: info.Retried, Outcome: run.Errored, Error: info.LastErr, Ended: timeOf(info.LastFailedAt)})
	case info.State == asynq.TaskStateActive:
		d.Reason = info.LastErr
		d.Attempts = append(d.Attempts, Attempt{Attempt: info.Retried, Outcome: AttemptRunning})
	default:
		d.Reason = info.LastErr
	}
	return d, err
}

// stateOf is Asynq's state of the eval's task, or StateQueued while it
// is an eval of no run held for admission.
func stateOf(info *asynq.TaskInfo) string {
	if info.State == asynq.TaskStateScheduled && tasks.Held(info.NextProcessAt) {
		return StateQueued
	}
	return info.State.String()
}

// finalAttempt is how the eval ended, as a run's record has it: its run's,
// or its task's result. ok is false while it has not ended.
func finalAttempt(ctx context.Context, runs *run.Store, info *asynq.TaskInfo, e tasks.Eval) (rec run.Record, ok bool, err error) {
	if e.Run != "" && runs != nil {
		rec, ok, err = runs.Record(ctx, e.Run, e.Key)
		if err != nil || ok {
			return rec, ok, err
		}
	}
	var res tasks.EvalResult
	if len(info.Result) == 0 || json.Unmarshal(info.Result, &res) != nil || res.Status == "" {
		return run.Record{}, false, nil
	}
	at := info.CompletedAt
	if info.State == asynq.TaskStateArchived {
		at = info.LastFailedAt
	}
	return res.Record(e, at), true, nil
}

// attemptOf is the final attempt as its record has it.
func attemptOf(rec run.Record) Attempt {
	a := Attempt{Attempt: rec.Retries, Executor: rec.Executor, Ended: timeOf(rec.At), Duration: rec.Duration,
		Outcome: rec.Status, Error: rec.Error, Score: rec.Score, Metrics: rec.Metrics, ExitCode: rec.ExitCode,
		Output: rec.Output, Stdout: rec.Stdout, Stderr: rec.Stderr}
	if a.Ended != nil && rec.Duration > 0 {
		start := a.Ended.Add(-time.Duration(rec.Duration * float64(time.Second)))
		a.Started = &start
	}
	return a
}

func timeOf(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
