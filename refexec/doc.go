// Package refexec is the reference executor: the implementation of the
// executor protocol that `evalpool executor` serves, and that the tests, the
// demo and the benchmarks drive. It keeps every rule of the protocol
// (fences, leases, signatures) and counts what a third-party executor would
// not tell: overlaps, the witness of the pool handing one executor out
// twice, which the tests hold at 0. Real deployments bring their own
// executors, which speak the same protocol.
//
// The protocol and its client stay in package executor, which the worker
// imports. This package runs an eval's command in a process group of its own
// and kills the group at the eval's end, which only unix offers; it notes
// each running group in a state directory, so that an executor killed
// mid-eval and started again ends what it left before it serves (Linux also
// kills the group with the executor). A worker needs none of it, and builds
// wherever Go does.
//
// A [Server] is one executor, running one eval at a time. A [Fleet] is many
// behind one listener, executor i under [FleetPath](i), for load tests that
// want a large pool without a process or a port per executor.
package refexec
