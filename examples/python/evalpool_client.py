#!/usr/bin/env python3
"""A small client for evalpool's HTTP API, standard library only.

Use it as a module:

    from evalpool_client import Client
    c = Client("http://127.0.0.1:8080", token="...")
    run = c.submit_run([{"eval_id": "q1", "spec": {"prompt": "2+2"}}], name="nightly")
    c.wait(run["name"])
    print(c.summary(run["name"]))

or as a command (installed by `pip install ./examples/python` as
evalpool-client), to gate a CI job on a suite:

    python3 evalpool_client.py --url http://127.0.0.1:8080 submit suite.jsonl \\
        --name nightly --min-pass-rate 0.9

which submits the JSON Lines suite ({"eval_id"?, "spec", "require"?} per line)
as one run, shows its progress on stderr, and prints its summary as
`evalpool run submit --wait` does. `summary NAME [--compare OTHER]
[--min-pass-rate R]` prints a run's summary (with --compare, the keys newly
failing and newly passing against OTHER), `results NAME [--follow]` its evals
as JSON Lines (with --follow, each as it ends, until the last). The URL may
come from EVALPOOL_URL, the token from EVALPOOL_AUTH_TOKEN.

Exit codes, the CLI's:

    0    ok
    1    an error: one the API answered (a run that exists, 409; not found,
         404; ...), an API it cannot reach, a suite it cannot read; or a run
         under --min-pass-rate (submit: by default any failed or errored
         eval; summary: only with the flag)
    2    a usage error: a bad flag or argument, --min-pass-rate over 1, a
         --name no run can have
    130  a wait stopped by Ctrl-C (the evals go on)

An error is one line on stderr.
"""

import argparse
import datetime
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class APIError(Exception):
    """An answer of the API that is not a success: its status and message."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class StreamError(Exception):
    """A followed stream of results that the API could not go on with."""


class Client:
    """Talks to the API an `evalpool dashboard` serves under /api/v1."""

    def __init__(self, url, token=None, timeout=30):
        self.url = url.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout = timeout

    def _request(self, method, path, body=None, stream=False):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            resp = urllib.request.urlopen(req, timeout=None if stream else self.timeout)
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                message = e.reason
            raise APIError(e.code, message) from None
        except urllib.error.URLError as e:
            raise APIError(0, f"cannot reach {self.url}: {e.reason}") from None
        if stream:
            return resp
        with resp:
            return json.loads(resp.read() or b"null")

    def submit_run(self, evals, name=None, require=None, timeout_s=None, max_retry=None, allow_empty_pool=None):
        """Submits evals (dicts with "spec", and "eval_id", "require" if any) as one run."""
        body = {"evals": evals}
        for k, v in (("name", name), ("require", require), ("timeout_s", timeout_s), ("max_retry", max_retry),
                     ("allow_empty_pool", allow_empty_pool)):
            if v is not None:
                body[k] = v
        return self._request("POST", "/runs", body)

    def progress(self, name):
        """A run's counts by status; cheap, for polling."""
        return self._request("GET", "/runs/" + urllib.parse.quote(name, safe="") + "/progress")

    def summary(self, name, compare=None):
        """How a run went; with compare, what changed against that run."""
        q = "?compare=" + urllib.parse.quote(compare, safe="") if compare else ""
        return self._request("GET", "/runs/" + urllib.parse.quote(name, safe="") + q)

    def results(self, name, follow=False):
        """Yields each eval of a run as a dict, in the run's order; with
        follow, each as it ends, until the last (GET /runs/{name}/results,
        ?follow=1). A followed stream that could not go on raises
        StreamError."""
        for _, row in self.result_lines(name, follow=follow):
            yield row

    def result_lines(self, name, follow=False):
        """results, each eval also as the JSON line the API sent."""
        q = "?follow=1" if follow else ""
        with self._request("GET", "/runs/" + urllib.parse.quote(name, safe="") + "/results" + q, stream=True) as resp:
            for line in resp:
                if not line.strip():
                    continue
                row = json.loads(line)
                if isinstance(row, dict) and list(row) == ["error"]:
                    raise StreamError(f"following run {name}: {row['error']}")
                yield line, row

    def cancel_run(self, name):
        return self._request("POST", "/runs/" + urllib.parse.quote(name, safe="") + "/cancel", {})

    def submit_eval(self, spec, eval_id=None, require=None):
        body = {"spec": spec}
        if eval_id is not None:
            body["eval_id"] = eval_id
        if require is not None:
            body["require"] = require
        return self._request("POST", "/evals", body)

    def get_eval(self, eval_id):
        return self._request("GET", "/evals/" + urllib.parse.quote(eval_id, safe=""))

    def cancel_eval(self, eval_id):
        return self._request("POST", "/evals/" + urllib.parse.quote(eval_id, safe="") + "/cancel", {})

    def wait(self, name, every=0.5, out=sys.stderr):
        """Polls a run until every eval ended, drawing its progress on out."""
        while True:
            p = self.progress(name)
            done = p["passed"] + p["failed"] + p["errored"] + p["cancelled"]
            if out is not None:
                width = 30
                filled = width * done // max(1, p["size"])
                out.write(f"\r{name} [{'#' * filled}{'.' * (width - filled)}] {done}/{p['size']}")
                out.flush()
            if done >= p["size"]:
                if out is not None:
                    out.write("\n")
                return p
            time.sleep(every)


class UsageError(Exception):
    """The caller's mistake in how they called the command: exit 2."""


def read_suite(path):
    """Reads a JSON Lines suite; a bad line names itself (ValueError)."""
    evals = []
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror or err}") from None
    for n, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid UTF-8 at byte {err.start}") from None
        if not text.strip():
            continue
        try:
            e = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{path}:{n}: not JSON: {err}") from None
        if not isinstance(e, dict) or "spec" not in e:
            raise ValueError(f'{path}:{n}: want {{"eval_id"?, "spec", "require"?}}')
        evals.append(e)
    if not evals:
        raise ValueError(f"{path}: no evals in the file")
    return evals


def _utc(stamp):
    """An RFC 3339 time of the API as the CLI prints it: UTC, whole seconds."""
    try:
        t = datetime.datetime.fromisoformat(re.sub(r"\.\d+", "", stamp).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return str(stamp)
    return t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_summary(s, out=sys.stdout):
    """Prints a summary as `evalpool run summary` does."""
    print(f"run {s['name']} (pool {s['pool']}, {s['size']} evals, submitted {_utc(s.get('created_at'))})", file=out)
    print(f"  passed {s['passed']}, failed {s['failed']}, errored {s['errored']}, "
          f"cancelled {s['cancelled']}, running {s['running']}, pending {s['pending']}", file=out)
    if s.get("submission") == "incomplete":
        enqueued = s.get("enqueued", 0)
        n = "an unknown number" if enqueued < 0 else str(enqueued)
        print(f"  submission incomplete: {n} of {s['size']} evals enqueued (unless its submit still runs); "
              f"finish it with `run submit --resume --name {s['name']}` and the same file, "
              f"or end it with `run cancel {s['name']}`", file=out)
    if s["pass_rate"] >= 0:
        print(f"  pass rate {100 * s['pass_rate']:.1f}%", file=out)
    if s.get("mean_score") is not None:
        print(f"  score mean {s['mean_score']:.3f}, median {s['median_score']:.3f}", file=out)
    print(f"  duration p50 {s.get('duration_p50_seconds', 0):.3f}s, p95 {s.get('duration_p95_seconds', 0):.3f}s; "
          f"{s.get('retries', 0)} retries", file=out)
    failures = s.get("failures") or []
    for f in failures[:20]:
        print(f"  {f['status']} {f['key']} {f.get('error', '')}".rstrip(), file=out)
    more = len(failures) + s.get("more_failures", 0) - 20
    if more > 0:
        print(f"  … and {more} more failures (results {s['name']})", file=out)
    c = s.get("compare")
    if c:
        failing, passing = c.get("newly_failing") or [], c.get("newly_passing") or []
        print(f"  against {c['against']}: {len(failing)} newly failing, {len(passing)} newly passing", file=out)
        for k in failing:
            print(f"    newly failing {k}", file=out)
        for k in passing:
            print(f"    newly passing {k}", file=out)


def gate(s, min_pass_rate):
    """The CLI's one rule: a run whose pass rate is under min_pass_rate
    fails (exit 1)."""
    if 0 <= s["pass_rate"] < min_pass_rate:
        print(f"evalpool: evals failed: run {s['name']} passed {100 * s['pass_rate']:.1f}%, "
              f"under the {100 * min_pass_rate:.1f}% required ({s['failed']} failed, {s['errored']} errored)",
              file=sys.stderr)
        return 1
    return 0


# A run's name, as the API's RunRequest has it.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


def run_name(name):
    if not NAME_PATTERN.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{name!r}: want 1 to 100 letters, digits or _.:- (starting with a letter or digit)")
    return name


def share(v):
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    if not f <= 1:  # and not NaN
        raise argparse.ArgumentTypeError(f"a share from 0 to 1, got {v}")
    return f


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    ap = argparse.ArgumentParser(prog="evalpool-client",
                                 description="Submit a suite to evalpool and gate on its pass rate; "
                                             "sum up, compare and list the results of runs.")
    ap.add_argument("--url", default=os.environ.get("EVALPOOL_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--token", default=os.environ.get("EVALPOOL_AUTH_TOKEN"))
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", help="submit a JSON Lines suite as a run, wait, print its summary")
    s.add_argument("file")
    s.add_argument("--name", type=run_name)
    s.add_argument("--min-pass-rate", type=share, default=1.0,
                   help="the least pass rate that passes the run (default: every eval must pass)")
    s.add_argument("--allow-empty-pool", action="store_true",
                   help="submit even if no executor is registered in the pool yet")
    s.add_argument("--no-wait", action="store_true")
    m = sub.add_parser("summary", help="print a run's summary; --compare lists what changed against another run")
    m.add_argument("name")
    m.add_argument("--compare", metavar="OTHER")
    m.add_argument("--json", action="store_true")
    m.add_argument("--min-pass-rate", type=share, help="exit 1 when the pass rate is under this")
    r = sub.add_parser("results", help="print a run's evals as JSON Lines; --follow, each as it ends")
    r.add_argument("name")
    r.add_argument("--follow", action="store_true", help="print each eval as it ends, until the last")
    args = ap.parse_args(argv)
    # SIGTERM stops a wait as Ctrl-C does, as the CLI's.
    signal.signal(signal.SIGTERM, _interrupt)
    c = Client(args.url, token=args.token)
    waiting = None
    try:
        if args.command == "summary":
            summary = c.summary(args.name, compare=args.compare)
            if args.json:
                json.dump(summary, sys.stdout, indent=2)
                print()
            else:
                print_summary(summary)
            return gate(summary, args.min_pass_rate) if args.min_pass_rate is not None else 0
        if args.command == "results":
            waiting = args.name if args.follow else None
            out = sys.stdout.buffer
            for line, _ in c.result_lines(args.name, follow=args.follow):
                out.write(line if line.endswith(b"\n") else line + b"\n")
                if args.follow:
                    out.flush()
            return 0
        evals = read_suite(args.file)
        run = c.submit_run(evals, name=args.name, allow_empty_pool=args.allow_empty_pool or None)
        print(run["name"], flush=True)
        if args.no_wait:
            return 0
        waiting = run["name"]
        c.wait(run["name"])
        summary = c.summary(run["name"])
        waiting = None
    except KeyboardInterrupt:
        if waiting:
            print(f"\nstopped waiting; the evals of run {waiting} go on: sum them up with "
                  f"`evalpool-client summary {waiting}`", file=sys.stderr)
        print("evalpool: interrupted", file=sys.stderr)
        return 130
    except (APIError, StreamError, ValueError) as e:
        print(f"evalpool: {e}", file=sys.stderr)
        return 1
    print_summary(summary)
    return gate(summary, args.min_pass_rate)


if __name__ == "__main__":
    sys.exit(main())
