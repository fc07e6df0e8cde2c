// Package evalpool runs evaluations on a fixed pool of remote executors
// (sandboxes, GPU boxes, grading services), on Asynq and Redis, with one
// promise: an executor is never lost and never double-booked, whatever
// crashes, retries twice or fails over.
//
// A program uses two things, both built on one go-redis client:
//
//   - a Client (NewClient) is what a producer holds: it submits runs and
//     evals, follows, cancels and retries them, and reads their results and
//     summaries. It runs nothing.
//   - a Worker (NewWorker) runs the evals of the pools it serves: it leases
//     an executor for each attempt, calls it, and gives it back.
//
// Any number of clients and workers, in any number of processes, share a
// pool. Executors speak the HTTP protocol of package executor; register
// them with Client.Pool(name).Register, or `evalpool pool add`.
//
// The lower packages are what these are made of: pool (the executors, their
// leases and the pool's settings, in Redis), worker (the Asynq handlers),
// client (the producer's operations), run (runs and their results), tasks
// (the payloads both sides share) and executor (the protocol, for those
// who write executors). docs/design.md says how they fit.
package evalpool
