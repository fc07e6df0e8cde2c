// Package keys names every Redis key of evalpool's own (Asynq's keys are Asynq's).
//
// Every key of a pool shares one hash tag, {<pool>}, so that each script,
// which is handed all of them, touches one cluster slot; a run's keys share
// {<run>} for the same reason. The names are a stored format: a deployment's
// data lives under them, and changing one strands that data. So they are
// written here, once, and pinned by this package's tests.
//
// The pool's scripts (lua) take their keys from Pool.Script, and
// lib.lua builds three kinds of names of its own from them: the label-set
// indexes (AvailableFor, WaitersFor) and the wake lists (Wake). It mirrors
// the suffixes below; a change to either side must be made to both.
package keys

import "strings"

// Instances is the one key evalpool keeps outside any pool: instance ID ->
// "pool url" for every executor that reported an ID, so that a pool sees an
// executor another pool holds. It has no hash tag, so it is read and written
// beside the scripts, never inside them. Pool.Instances is another key: a
// pool's own index of instance IDs.
const Instances = "evalpool:instances"

// Runs indexes every run (name -> ms it was created), across pools.
const Runs = "evalpool:runs"

// Suite indexes the runs of one suite (run.Run.Suite): name -> ms it was
// created, the newest run.MaxSuiteRuns kept.
func Suite(suite string) string { return "evalpool:suite:" + suite }

// OpenRuns indexes a pool's runs not known to have ended: name -> ms when
// the reap's reconciliation next looks at it. A run leaves it once every
// eval's end is recorded.
func OpenRuns(pool string) string { return "evalpool:runs:open:" + pool }

// Pool names the keys of one pool.
type Pool struct{ prefix string }

// ForPool names the keys of the pool name. The name must hold no '{' or
// '}', which would move the hash tag; the pool package refuses such names.
func ForPool(name string) Pool { return Pool{prefix: "evalpool:{" + name + "}:"} }

// Script is the keys every pool script takes, in the order of lib.lua's
// KEYS[1..19]: a script reads a key by its place in this list.
func (k Pool) Script() []string {
	return []string{
		k.Executors(), k.Available(), k.Leases(), k.Deadlines(), k.Holders(),
		k.Draining(), k.Fence(), k.Epoch(), k.Instances(), k.Waiters(),
		k.Waiting(), k.Quarantine(), k.Avoid(), k.Labelled(), k.Cancelled(),
		k.History(), k.Outlived(), k.Clock(), k.Settings(),
	}
}

// Executors is KEYS[1], the registered executors.
func (k Pool) Executors() string { return k.prefix + "executors" }

// Available is KEYS[2], the free executors. lib.lua finds the pool's prefix
// by cutting "available" off its end.
func (k Pool) Available() string { return k.prefix + "available" }

// Leases is KEYS[3], the leased executors.
func (k Pool) Leases() string { return k.prefix + "leases" }

// Deadlines is KEYS[4], the leases' deadlines.
func (k Pool) Deadlines() string { return k.prefix + "deadlines" }

// Holders is KEYS[5], eval -> the executor it holds.
func (k Pool) Holders() string { return k.prefix + "holders" }

// Draining is KEYS[6], executors deregistered while leased.
func (k Pool) Draining() string { return k.prefix + "draining" }

// Fence is KEYS[7], the fencing counter.
func (k Pool) Fence() string { return k.prefix + "fence" }

// Epoch is KEYS[8], the marker whose loss means the pool's data was lost.
func (k Pool) Epoch() string { return k.prefix + "epoch" }

// Instances is KEYS[9], the pool's own instance ID -> URL index; the
// package-level Instances is the one across pools.
func (k Pool) Instances() string { return k.prefix + "instances" }

// Waiters is KEYS[10], the wait list of evals that require no labels.
func (k Pool) Waiters() string { return k.prefix + "waiters" }

// Waiting is KEYS[11], each waiting eval's grant-to-be.
func (k Pool) Waiting() string { return k.prefix + "waiting" }

// Quarantine is KEYS[12], executors out of service.
func (k Pool) Quarantine() string { return k.prefix + "quarantine" }

// Avoid is KEYS[13], eval -> the executor its next acquire avoids.
func (k Pool) Avoid() string { return k.prefix + "avoid" }

// Labelled is KEYS[14], label set -> how many executors have exactly
// those labels.
func (k Pool) Labelled() string { return k.prefix + "labelled" }

// Cancelled is KEYS[15], the cancelled evals.
func (k Pool) Cancelled() string { return k.prefix + "cancelled" }

// History is KEYS[16], the stream of ended leases.
func (k Pool) History() string { return k.prefix + "history" }

// Outlived is KEYS[17], the tokens of leases that ended otherwise than by
// their release, lately.
func (k Pool) Outlived() string { return k.prefix + "outlived" }

// Clock is KEYS[18], the pool's time: Redis's clock less the steps it took,
// and a generation that only grows.
func (k Pool) Clock() string { return k.prefix + "clock" }

// Settings is KEYS[19], the settings every process using the pool shares.
func (k Pool) Settings() string { return k.prefix + "settings" }

// OlderLabelSets is where releases up to 1932b7a counted the executors of
// each subset of their labels: a pool that has it is migrated
// (migrate.lua).
func (k Pool) OlderLabelSets() string { return k.prefix + "labelsets" }

// LabelledFor is the available index of the label set set (lib.lua's
// labelled_key): the free executors whose labels are exactly those.
func (k Pool) LabelledFor(set string) string { return k.prefix + "labelled:" + set }

// WaitersFor is the wait list of evals that require the label set set
// (lib.lua's waiters_key).
func (k Pool) WaitersFor(set string) string { return k.prefix + "waiters:" + set }

// Wake is the list a worker's waiting evals get their grants on: one per
// worker process, in the pool's slot, so that a script may push to it.
func (k Pool) Wake(worker string) string { return k.WakePrefix() + worker }

// WakePrefix starts every wake list: a script pushes a grant only to a key
// under it (lib.lua's WAKE_PREFIX), never to any key a caller names.
func (k Pool) WakePrefix() string { return k.prefix + "wake:" }

// Reaped is the marker that lets one reap through per interval across a
// fleet. No script reads it.
func (k Pool) Reaped() string { return k.prefix + "reaped" }

// Scratch is a key in the pool's slot that evalpool never uses, for tests
// and benchmarks that put data of their own beside the pool's. Pattern
// matches it, so it goes when the pool's keys are cleaned up.
func (k Pool) Scratch(name string) string { return k.prefix + "scratch:" + name }

// Pattern is the SCAN pattern that matches every key of the pool and no
// other pool's: the glob characters a pool name may hold are escaped, so
// that cleaning up the pool "a*" does not clean up "ab".
func (k Pool) Pattern() string { return globEscaper.Replace(k.prefix) + "*" }

var globEscaper = strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`)

// Run names the keys of one run.
type Run struct{ prefix string }

// ForRun names the keys of the run name.
func ForRun(name string) Run { return Run{prefix: "evalpool:run:{" + name + "}:"} }

// Script is the run's keys in the order of run_finish.lua's KEYS[1..9].
func (k Run) Script() []string {
	return []string{k.Done(), k.Counts(), k.Running(), k.Meta(), k.Evals(), k.Ended(), k.Specs(), k.Queued(), k.Admitted()}
}

// Done is KEYS[1], eval key -> how it ended.
func (k Run) Done() string { return k.prefix + "done" }

// Counts is KEYS[2], status -> how many evals ended in it.
func (k Run) Counts() string { return k.prefix + "counts" }

// Running is KEYS[3], eval key -> the executor its attempt runs on.
func (k Run) Running() string { return k.prefix + "running" }

// Meta is KEYS[4], what the run was submitted as.
func (k Run) Meta() string { return k.prefix + "meta" }

// Evals is KEYS[5], the run's eval keys in order.
func (k Run) Evals() string { return k.prefix + "evals" }

// Ended is KEYS[6], the run's ended eval keys in the order they ended: the
// log a follower reads from its cursor (run.Store.EndedSince).
func (k Run) Ended() string { return k.prefix + "ended" }

// Specs is KEYS[7], eval key -> its task's payload, from its submission
// to its end: what admission enqueues, and enqueues again if it was lost.
func (k Run) Specs() string { return k.prefix + "specs" }

// Queued is KEYS[8], the eval keys waiting for admission, in order.
func (k Run) Queued() string { return k.prefix + "queued" }

// Admitted is KEYS[9], the eval keys admitted to the pool's queue that
// have not ended: the run's evals in flight.
func (k Run) Admitted() string { return k.prefix + "admitted" }

// Admissible indexes a pool's runs with evals waiting for admission or in
// flight: name -> ms the run was created, so that admission looks at the
// oldest first, and at no run that has nothing to admit.
func Admissible(pool string) string { return "evalpool:runs:admissible:" + pool }

// Standalone holds a pool's evals of no run in flight: eval ID -> ms it
// was admitted (run.Store.Admit).
func Standalone(pool string) string { return "evalpool:standalone:admitted:" + pool }

// Admitting is a pool's admission lock, and Readmit the flag that tells
// its holder to go round again (run.Store.Admit).
func Admitting(pool string) string { return "evalpool:runs:admitting:" + pool }

// Readmit: see Admitting.
func Readmit(pool string) string { return "evalpool:runs:readmit:" + pool }

// Retrying is the token of the retry of the run under way, for a while
// (run.Store.LockRetry).
func (k Run) Retrying() string { return k.prefix + "retrying" }
