#!/usr/bin/env python3
"""A small client for evalpool's HTTP API, standard library only.

Use it as a module:

    from evalpool_client import Client
    c = Client("http://127.0.0.1:8080", token="...")
    run = c.submit_run([{"eval_id": "q1", "spec": {"prompt": "2+2"}}], name="nightly")
    c.wait(run["name"])
    print(c.summary(run["name"]))

or as a command, `evalpool-client` once installed by
`pip install ./examples/python` (or run as `python3 evalpool_client.py`), to
gate a CI job on a suite:

    evalpool-client --url http://127.0.0.1:8080 submit suite.jsonl \\
        --name nightly --min-pass-rate 0.9 --meta model=m1 --epochs 5

which submits the JSON Lines suite ({"eval_id"?, "spec", "require"?,
"group"?} per line) as one run, shows its progress on stderr, and prints its
summary as `evalpool run submit --wait` does. submit takes the flags of
`evalpool run submit`, checked before anything is sent: --require KEY=VALUE
(repeatable), --timeout SECONDS, --max-retry N, --retention DURATION (36h,
90m, 1h30m), --meta KEY=VALUE (repeatable), --epochs K, --weight N,
--max-executors N, --priority normal|high, --resume,
--allow-empty-pool; and --no-wait. `summary NAME [--compare OTHER]
[--min-pass-rate R]` prints a run's summary (with --compare, what changed
against OTHER: pass rate, metrics, groups, the keys newly failing and newly
passing), `results NAME [--follow]` its evals as JSON Lines (with --follow,
each as it ends, until the last). The URL may come from EVALPOOL_URL, the
token from EVALPOOL_AUTH_TOKEN.

Exit codes, the CLI's:

    0    ok
    1    an error: one the API answered (a run that exists, 409; not found,
         404; ...), an API it cannot reach, a suite it cannot read; or a run
         under --min-pass-rate (submit: by default any failed or errored
         eval; summary: only with the flag)
    2    a usage error: a bad flag or argument (--min-pass-rate over 1, a
         --name no run can have, a --meta key the API refuses, ...);
         nothing is sent
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
import unicodedata
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

    def submit_run(self, evals, name=None, require=None, timeout_s=None, max_retry=None, retention_s=None,
                   resume=None, allow_empty_pool=None, meta=None, epochs=None, weight=None, max_executors=None,
                   priority=None):
        """Submits evals (dicts with "spec", and "eval_id", "require", "group"
        if any) as one run; the other arguments are POST /runs' fields of the
        same names, left out when None."""
        body = {"evals": evals}
        for k, v in (("name", name), ("require", require), ("timeout_s", timeout_s), ("max_retry", max_retry),
                     ("retention_s", retention_s), ("resume", resume), ("allow_empty_pool", allow_empty_pool),
                     ("meta", meta), ("epochs", epochs), ("weight", weight), ("max_executors", max_executors),
                     ("priority", priority)):
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

    def wait(self, name, every=0.5, out=sys.stderr, line_every=5.0):
        """Polls a run until every eval ended, showing its progress on out:
        a bar on a terminal; elsewhere (a CI log), as the CLI does, a line
        "NAME: N of M ended" every line_every seconds and at the end."""
        bar = out is not None and out.isatty()
        shown, shown_at = None, 0.0
        while True:
            p = self.progress(name)
            done = p["passed"] + p["failed"] + p["errored"] + p["cancelled"]
            ended = done >= p["size"]
            if bar:
                width = 30
                filled = width * done // max(1, p["size"])
                out.write(f"\r{name} [{'#' * filled}{'.' * (width - filled)}] {done}/{p['size']}" + ("\n" if ended else ""))
                out.flush()
            elif out is not None and (time.monotonic() - shown_at >= line_every or ended and done != shown):
                shown, shown_at = done, time.monotonic()
                out.write(f"{name}: {done} of {p['size']} ended\n")
                out.flush()
            if ended:
                return p
            time.sleep(every)


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
            raise ValueError(f'{path}:{n}: want {{"eval_id"?, "spec", "require"?, "group"?}}')
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
    meta = s.get("meta") or {}
    if meta:
        print("  meta " + " ".join(f"{k}={_quote(meta[k])}" for k in sorted(meta)), file=out)
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
    at = []
    if s.get("pass_at_1") is not None:
        at.append(f"pass@1 {100 * s['pass_at_1']:.1f}%")
    if s.get("pass_at_k") is not None:
        at.append(f"pass@{s['epochs']} {100 * s['pass_at_k']:.1f}%")
    if at:
        print(f"  {', '.join(at)} ({s['epochs']} epochs)", file=out)
    if s.get("score") is not None and s.get("median_score") is not None:
        print(f"  score mean {_stat(s['score'])}, median {s['median_score']:.3f}", file=out)
    elif s.get("mean_score") is not None:
        print(f"  score mean {s['mean_score']:.3f}, median {s['median_score']:.3f}", file=out)
    for name in sorted(s.get("metrics") or {}):
        print(f"  {name} {_stat(s['metrics'][name])}", file=out)
    print(f"  duration p50 {s.get('duration_p50_seconds', 0):.3f}s, p95 {s.get('duration_p95_seconds', 0):.3f}s; "
          f"{s.get('retries', 0)} retries", file=out)
    _print_groups(s.get("groups") or [], out)
    failures = s.get("failures") or []
    for f in failures[:20]:
        print(f"  {f['status']} {f['key']} {f.get('reason', '')}".rstrip(), file=out)
    more = len(failures) + s.get("more_failures", 0) - 20
    if more > 0:
        print(f"  … and {more} more failures (results {s['name']})", file=out)
    c = s.get("compare")
    if c:
        failing, passing = c.get("newly_failing") or [], c.get("newly_passing") or []
        print(f"  against {c['against']}: {len(failing)} newly failing, {len(passing)} newly passing", file=out)
        if c.get("pass_rate") is not None:
            print(f"    pass rate {_rate_delta(c['pass_rate'])}", file=out)
        for name in sorted(c.get("metrics") or {}):
            d = c["metrics"][name]
            print(f"    {name} {d['before']:.3f} → {d['after']:.3f} ({d['delta']:+.3f})", file=out)
        groups = c.get("groups") or []
        for g in groups[:MAX_PRINTED_GROUPS]:
            print(f"    group {g['group']}: pass rate {_rate_delta(g['pass_rate'])}", file=out)
        if len(groups) > MAX_PRINTED_GROUPS:
            print(f"    … and {len(groups) - MAX_PRINTED_GROUPS} more groups (run summary --json)", file=out)
        for k in failing:
            print(f"    newly failing {k}", file=out)
        for k in passing:
            print(f"    newly passing {k}", file=out)


MAX_PRINTED_GROUPS = 50


def _quote(v):
    """A meta value as the CLI prints it: quoted when it holds a blank or a quote, or is empty."""
    if v == "" or '"' in v or any(ch.isspace() for ch in v):
        return json.dumps(v, ensure_ascii=False)
    return v


def _stat(st):
    """A mean with its standard error and count: 0.712 ± 0.031 (n=30)."""
    return f"{st['mean']:.3f} ± {st['stderr']:.3f} (n={st['n']})"


def _rate_delta(d):
    """A pass rate's change in percentage points: 70.0% → 63.3% (-6.7 pp)."""
    return f"{100 * d['before']:.1f}% → {100 * d['after']:.1f}% ({100 * d['delta']:+.1f} pp)"


def _print_groups(groups, out):
    """The CLI's groups table: columns two blanks apart, the first 50 groups."""
    if not groups:
        return
    print(f"  {len(groups)} groups:", file=out)
    rows = [("    group", "passed/failed/errored", "pass rate", "score mean")]
    for g in groups[:MAX_PRINTED_GROUPS]:
        rate = f"{100 * g['pass_rate']:.1f}%" if g["pass_rate"] >= 0 else "-"
        score = f"{g['score']['mean']:.3f}" if g.get("score") else "-"
        rows.append((f"    {g['group']}", f"{g['passed']}/{g['failed']}/{g['errored']}", rate, score))
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
    for r in rows:
        print("".join(cell.ljust(w) for cell, w in zip(r, widths)) + r[3], file=out)
    if len(groups) > MAX_PRINTED_GROUPS:
        print(f"    … and {len(groups) - MAX_PRINTED_GROUPS} more groups (run summary --json)", file=out)


def gate(s, min_pass_rate):
    """The CLI's one rule: a run whose pass rate is under min_pass_rate,
    or that has none (nothing graded) while one is required, fails (exit 1)."""
    if s["pass_rate"] < 0 and min_pass_rate > 0:
        done = s["passed"] + s["failed"] + s["errored"] + s["cancelled"]
        print(f"evalpool: evals failed: run {s['name']} has no graded eval ({s['cancelled']} cancelled, "
              f"{s['size'] - done} not ended), so nothing to pass {100 * min_pass_rate:.1f}% of", file=sys.stderr)
        return 1
    if 0 <= s["pass_rate"] < min_pass_rate:
        print(f"evalpool: evals failed: run {s['name']} passed {100 * s['pass_rate']:.1f}%, "
              f"under the {100 * min_pass_rate:.1f}% required ({s['failed']} failed, {s['errored']} errored)",
              file=sys.stderr)
        return 1
    return 0


# The API's bounds, as api/openapi.json has them.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_./:-]{1,63}")
MAX_LABELS = 4
META_KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_META, MAX_META_VALUE_BYTES = 32, 512
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_RETENTION_S = 365 * 24 * 3600
MAX_RETRY, MAX_EPOCHS, MAX_WEIGHT = 100, 100, 1000


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


def bounded(low, high):
    """An argparse type: a whole number from low to high."""
    def parse(v):
        try:
            n = int(v, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r} is not a whole number") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"want {low} to {high}, got {n}")
        return n
    return parse


DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def retention(v):
    """A duration as the CLI spells one, in whole seconds (36h, 90m, 1h30m,
    3600s): its seconds."""
    m = DURATION.fullmatch(v)
    if not v or not m:
        raise argparse.ArgumentTypeError(f"{v!r}: want a duration such as 36h, 90m or 1h30m")
    h, mins, secs = (int(g or 0) for g in m.groups())
    n = 3600 * h + 60 * mins + secs
    if not 1 <= n <= MAX_RETENTION_S:
        raise argparse.ArgumentTypeError(f"{v!r}: want 1s to {MAX_RETENTION_S // 3600}h")
    return n


def pair(v):
    """A key=value argument, split."""
    k, eq, val = v.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"{v!r}: want key=value")
    return k, val


def requirements(pairs):
    """The labels of --require, checked as the API checks an eval's: at
    most 4, keys and values of 1 to 63 letters, digits or _./:-."""
    labels = {}
    for k, v in pairs:
        if labels.get(k, v) != v:
            raise ValueError(f"--require {k} given twice")
        if not LABEL_PATTERN.fullmatch(k) or not LABEL_PATTERN.fullmatch(v):
            raise ValueError(f"--require {k}={v}: keys and values are 1 to 63 letters, digits or _./:-")
        labels[k] = v
    if len(labels) > MAX_LABELS:
        raise ValueError(f"--require: {len(labels)} labels, at most {MAX_LABELS}")
    return labels or None


def metadata(pairs):
    """The entries of --meta, checked as the API checks a run's: at most 32,
    keys of 1 to 64 letters, digits or _.- starting with a letter or _,
    values of at most 512 bytes of UTF-8 with no control character."""
    meta = {}
    for k, v in pairs:
        if k in meta:
            raise ValueError(f"--meta {k} given twice")
        if not META_KEY_PATTERN.fullmatch(k):
            raise ValueError(f"--meta key {k!r}: want 1 to 64 letters, digits or _.- starting with a letter or _")
        try:
            size = len(v.encode("utf-8"))
        except UnicodeEncodeError:  # bytes of the command line not UTF-8
            size = None
        if size is None or size > MAX_META_VALUE_BYTES or any(unicodedata.category(ch) == "Cc" for ch in v):
            raise ValueError(f"--meta {k}: want a value of at most {MAX_META_VALUE_BYTES} bytes of UTF-8, "
                             f"no control character")
        meta[k] = v
    if len(meta) > MAX_META:
        raise ValueError(f"--meta: {len(meta)} entries, more than {MAX_META}")
    return meta or None


class Parser(argparse.ArgumentParser):
    """argparse's parser with the CLI's usage errors: one line, exit 2."""

    def error(self, message):
        self.exit(2, f"evalpool: {message}; see {self.prog} --help\n")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    ap = Parser(prog="evalpool-client",
                description="Submit a suite to evalpool and gate on its pass rate; "
                            "sum up, compare and list the results of runs.")
    ap.add_argument("--url", default=os.environ.get("EVALPOOL_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--token", default=os.environ.get("EVALPOOL_AUTH_TOKEN"))
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", help="submit a JSON Lines suite as a run, wait, print its summary",
                       description='Submit the evals of a JSON Lines file ({"eval_id"?, "spec", "require"?, '
                                   '"group"?} per line) as one run, print its name, wait for it, print its '
                                   'summary, and exit 1 when its pass rate is under --min-pass-rate.')
    s.add_argument("file")
    s.add_argument("--name", type=run_name, help="the run's name (default run-YYYYMMDD-HHMMSS-XXXXXX)")
    s.add_argument("--require", type=pair, action="append", default=[], metavar="KEY=VALUE",
                   help="run every eval only on executors with label key=value (repeatable)")
    s.add_argument("--timeout", type=bounded(1, MAX_TIMEOUT_S), metavar="SECONDS",
                   help="time limit of one attempt, in whole seconds (default: the server's, 600)")
    s.add_argument("--max-retry", type=bounded(0, MAX_RETRY), metavar="N",
                   help="retries of a failed attempt, 0 for none (default: the server's, 3)")
    s.add_argument("--retention", type=retention, metavar="DURATION",
                   help="how long the run, its evals' ends and results, is kept after its last eval ended: "
                        "a duration in whole seconds such as 36h, 90m or 1h30m (default: the server's, 168h)")
    s.add_argument("--meta", type=pair, action="append", default=[], metavar="KEY=VALUE",
                   help="what the run is of, key=value (model=…, commit=…; repeatable): shown in its summary")
    s.add_argument("--epochs", type=bounded(1, MAX_EPOCHS), metavar="K",
                   help="run each eval K times (KEY#1 … KEY#K), for pass@1 and pass@K")
    s.add_argument("--weight", type=bounded(1, MAX_WEIGHT), metavar="N",
                   help="the run's share of the pool against the other runs in flight (default 1)")
    s.add_argument("--max-executors", type=bounded(0, 1 << 31), metavar="N",
                   help="the most executors the run holds at once (default 0: no cap)")
    s.add_argument("--priority", choices=("normal", "high"),
                   help="high: served before the normal runs (default normal)")
    s.add_argument("--min-pass-rate", type=share, default=1.0, metavar="R",
                   help="the least pass rate that passes the run (default: every eval must pass)")
    s.add_argument("--allow-empty-pool", action="store_true",
                   help="submit even if no executor is registered in the pool yet")
    s.add_argument("--resume", action="store_true",
                   help="finish the submission of run --name that was cut short: the same file; "
                        "evals enqueued already are left alone")
    s.add_argument("--no-wait", action="store_true", help="print the run's name and exit")
    m = sub.add_parser("summary", help="print a run's summary; --compare lists what changed against another run")
    m.add_argument("name")
    m.add_argument("--compare", metavar="OTHER")
    m.add_argument("--json", action="store_true")
    m.add_argument("--min-pass-rate", type=share, metavar="R", help="exit 1 when the pass rate is under this")
    r = sub.add_parser("results", help="print a run's evals as JSON Lines; --follow, each as it ends")
    r.add_argument("name")
    r.add_argument("--follow", action="store_true", help="print each eval as it ends, until the last")
    args = ap.parse_args(argv)
    if args.command == "submit":
        try:
            require, meta = requirements(args.require), metadata(args.meta)
        except ValueError as e:
            s.error(str(e))
        if args.resume and not args.name:
            s.error("--resume needs the --name of the run to finish")
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
        run = c.submit_run(evals, name=args.name, require=require, timeout_s=args.timeout,
                           max_retry=args.max_retry, retention_s=args.retention, resume=args.resume or None,
                           allow_empty_pool=args.allow_empty_pool or None, meta=meta, epochs=args.epochs,
                           weight=args.weight, max_executors=args.max_executors, priority=args.priority)
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
