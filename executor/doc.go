// Package executor is the HTTP protocol between evalpool and an executor,
// and the client a worker calls executors with. The reference executor
// behind `evalpool executor` is package
// [github.com/evalpool/evalpool/refexec], kept out of this one so that a
// worker imports the protocol alone, not a server that runs commands and
// kills their process groups.
//
// The protocol is small on purpose: one POST per eval carrying the lease's
// fencing number, so that the executor itself can refuse a holder whose lease
// has passed to someone else. The pool makes double booking impossible as
// long as every holder behaves; the fence makes it harmless when one does not
// (a worker paused past its lease, a zombie request still in flight), and the
// lease below bounds how long a holder that went silent keeps the executor.
//
// # Evals
//
// POST /v1/evals with a [Request]: {"eval_id", "fence", "spec", "lease_ms",
// "sent_at_ms"}. The X-Evalpool-Deadline header, in unix milliseconds, is
// when the caller stops waiting; the executor stops the eval then. The
// answer is a [Result] (200), 409 when the eval was refused or stopped, 504
// at the deadline, 413 for a body over [MaxRequestBytes], 400 for a
// malformed one. A 409 says why in {"error", "reason"} ([Reason]):
// "stale_fence" (a fence not above the highest seen, which it gives as
// "max_fence"), "preempted" (a higher
// fence took over), "lease_expired" (the lease passed unextended),
// "lease_over_on_arrival"; the client's error is a [RefusedError], which is
// [ErrFenced].
//
// # Whose fault
//
// The answer says whose fault an eval without a grade is, and the pool
// counts only the executor's against its health. The rule for an executor:
//
//   - It ran the eval and the eval has a grade: 200 {"status": "passed" or
//     "failed", "score"?, "metrics"?, "output"?}; "metrics" names measures
//     besides the score ({"accuracy": 1, "f1": 0.7}: at most [MaxMetrics],
//     named as [CheckMetrics] says; a null one is none), which a run
//     averages.
//   - It ran the eval and the eval has none by its own fault (its grader
//     exited other than 0, was killed by a signal it did not get from the
//     executor, ran past its time, or wrote no result): 200 {"status":
//     "errored", "error": why, "exit_code"?}. The caller retries it,
//     preferably elsewhere, up to its retries, without holding it against
//     the executor.
//   - It could not run the eval (no sandbox, a full disk, the grader's
//     program missing from the image, a crash of its own): 5xx. That, no
//     answer, and an answer that is not a [Result] are [ErrUnavailable] or
//     [ErrBadAnswer]: the executor's fault, counted towards its quarantine.
//
// Any result may carry "stdout" and "stderr", the ends of what the grader
// wrote besides its result (a few KiB: they are stored with every result;
// the client keeps at most [MaxTailBytes] of each). The reference executor
// takes a grader's result from the file named by EVALPOOL_RESULT_FILE, when
// the grader wrote one, else from the last line of its stdout that is a
// JSON object (else its whole stdout): anything else it prints is log.
//
// # Time
//
// Every answer carries the executor's wall clock in [TimeHeader]
// (X-Evalpool-Time, unix ms), 401s, 404s and 409s included. The client
// keeps, per executor, the last stamp and when its request went out and its
// answer came, and dates what it sends in the executor's clock: sent_at_ms
// by a lower bound (the stamp plus the time since the answer came, less
// 1,000 ppm of drift), so that a lease dated by it can only end early; the
// deadline by an upper bound (the stamp plus the time since the request
// went out), so that it never comes before the caller's own. The caller's
// wall clock is then never used; an executor that tells no time is sent it,
// as before. A 504 stamped at or past the deadline it was sent, more than a
// second before the caller's deadline, is [ErrEarlyDeadline]: the clocks
// differ, the executor is not at fault.
//
// # Leases
//
// lease_ms is the time left on the caller's lease when it sent the request,
// and sent_at_ms that moment in the executor's clock, as far as the caller
// knows it and never later (see Time). A lease-aware executor sets its own
// lease end to the moment it received the request plus lease_ms, on its
// monotonic clock, and no later than sent_at_ms plus lease_ms by its own
// wall clock: a request delayed in the network or replayed cannot carry the
// lease past its end, and one whose lease is already over on arrival is
// refused (409 "lease_over_on_arrival").
// The executor stops the eval (cancels it, kills its command's process
// group) and answers 409 when the lease end passes without an extension.
// The caller keeps the lease alive with
//
//	POST /v1/lease {"eval_id", "fence", "lease_ms", "sent_at_ms"}
//
// which moves the lease end, never back, the same way: 200
// {"lease_ms": N} when that eval under that fence is the executor's holder,
// 409 when a newer fence holds the executor (the caller lost it), the eval
// is already stopping (the reason of its stop), or the extension's lease was
// over on arrival, 404 when nothing runs under that eval and fence (it
// finished, or its POST has not arrived yet). A request without lease_ms is
// bounded by its deadline alone, as before leases.
//
// Leases are what makes "never double-booked" hold against a holder that
// cannot be reached: the pool gives an executor whose lease passed (plus a
// grace period) to someone else, and by then a lease-aware executor has
// stopped the old eval on its own. The rule for third-party executors: a
// lease-aware executor must stop an eval when lease_ms passes without an
// extension. A fencing-only executor, which ignores lease_ms, still refuses
// older fences and preempts on newer ones, so it never runs a stale holder's
// eval after the new holder's has arrived; but it can run a paused or
// partitioned holder's eval alongside the pool's next lease for up to the
// grace period, until the next holder's request preempts it.
//
// # Overlaps
//
// The reference executor counts an overlap (its Stats.Overlaps) when an eval
// for a different eval_id arrives while the executor's holder is still live:
// its lease has not passed and its caller has not given it up (it waits a
// quarter of a second to tell a holder being abandoned at that moment). That
// is double booking by the pool, seen from the executor, and it must stay 0.
// A lease-aware executor then refuses the newcomer with 423 Locked
// ([ErrBusy], counted in Busy) and changes nothing: the holder runs on, and
// the pool's mistake costs an attempt, not an eval run twice at once. A
// holder without a lease is preempted instead, as fencing alone would. A
// higher fence for the same eval_id is a newer attempt of that eval taking
// over, counted in Preempted. In every case a newcomer waits for the old
// eval to stop before it runs, so two evals never run at once.
//
// # Authentication
//
// Every POST carries Content-Type: application/json, and neither Origin
// nor a Sec-Fetch-Site other than "none" or "same-origin": an executor
// refuses a request that is not JSON (415) or comes from a web page (403),
// which a browser could send without a preflight. An executor started with
// a secret refuses with 401, changing nothing, any POST without a valid
// X-Evalpool-Signature header (see [SignV2]):
//
//	v2=<signed at ms>.<hex SHA-256(body)>.<hex HMAC-SHA256(secret,
//	  "evalpool-v2\n" method "\n" host "\n" path "\n" deadline "\n"
//	  signed at ms "\n" hex SHA-256(body))>
//
// where host is the host:port the caller dialed, path the request's path
// as sent on the request line (the prefix of an executor mounted under one
// included), deadline the X-Evalpool-Deadline header's value (empty when
// there is none) and signed at the caller's estimate of the executor's
// clock. The executor refuses a host that is not one of its names and a
// time more than [DefaultSignatureWindow] from its clock: a request
// replayed to another executor with the same secret, or later, is refused.
// The head alone decides, so a forged request is refused before its body
// is read; the body is then checked against the digest. The older v1
// signature ([Sign]) names neither host nor time and is refused unless the
// executor is told to accept it during an upgrade. A fence more than
// [MaxFenceAhead] ahead of the executor's clock in ms is refused (400) and
// not recorded: no pool grants one. The signature proves who sent a
// request and bounds when, but guards nothing on a network where requests
// can be read: use TLS or a private network there. Answers are not
// signed: whoever can rewrite them can also move the time an executor
// tells. GET /healthz and GET /v1/stats stay open: they change nothing.
// [Client.CheckSignature] asks whether an executor accepts a client's
// signature with an extension that changes nothing (fence 0, an eval none
// runs): 401 or not.
//
// # Identity
//
// GET /healthz answers 200 {"status": "ok", "instance_id": "..."}. The
// instance ID names the executor itself, whatever URL reaches it, and stays
// the same across its restarts: `evalpool pool add` asks for it and refuses
// a second URL for an executor already in the pool (localhost and 127.0.0.1,
// a proxy in front of it), which would otherwise be handed out twice. The
// reference executor's ID defaults to HOSTNAME:PORT (--instance-id sets
// it); one made by refexec.New without one gets a random ID. An executor that answers
// a plain 200 "ok" is healthy with an empty instance ID, and only its
// canonical URL keeps it from being registered twice.
package executor
