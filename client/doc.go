// Package client is the producer's side of evalpool: it submits runs, and
// follows and cancels evals and runs, without running a worker.
//
// The CLI's eval and run commands and package api's handlers are producers:
// they hold an Asynq client or inspector, a pool and a run store, never an
// Asynq server. Keeping their helpers out of package worker means importing
// them does not pull in the worker's servers, handlers and metrics. What both
// sides must agree on, the payloads and an eval's result (tasks.EvalResult),
// is in package tasks; client never imports worker.
package client
