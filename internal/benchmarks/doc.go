// Package benchmarks measures evalpool side by side with what it replaces
// and what it runs on, and writes BENCHMARKS.md: `make bench`.
//
// Everything runs against a redis-server the harness starts, on loopback,
// in one run, so that the ratios compare like with like: the pool against
// the original LIST design at the same pool sizes, an eval end to end
// against a plain Asynq no-op task at the same concurrency. The harness is a
// test behind the "bench" build tag, so `make test` does not run it.
package benchmarks
