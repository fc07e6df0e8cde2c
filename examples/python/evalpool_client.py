#!/usr/bin/env python3
"""A small client for evalpool's HTTP API, standard library only.

Use it as a module:

    from evalpool_client import Client
    c = Client("http://127.0.0.1:8080", token="...")
    run = c.submit_run([{"eval_id": "q1", "spec": {"prompt": "2+2"}}], name="nightly")
    c.wait(run["name"])
    print(c.summary(run["name"]))

or as a command, to gate a CI job on a suite:

    python3 evalpool_client.py --url http://127.0.0.1:8080 submit suite.jsonl \\
        --name nightly --min-pass-rate 0.9

which submits the JSON Lines suite ({"eval_id"?, "spec", "require"?} per line)
as one run, shows its progress on stderr, prints its summary, and exits 1 when
the pass rate is under --min-pass-rate (by default, when any eval failed or
errored), 2 on a usage or API error. The token may come from EVALPOOL_AUTH_TOKEN.
"""

import argparse
import json
import os
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

    def submit_run(self, evals, name=None, require=None, timeout_s=None, max_retry=None):
        """Submits evals (dicts with "spec", and "eval_id", "require" if any) as one run."""
        body = {"evals": evals}
        for k, v in (("name", name), ("require", require), ("timeout_s", timeout_s), ("max_retry", max_retry)):
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
        """Yields each eval of a run as a dict; with follow, as they end."""
        q = "?follow=1" if follow else ""
        with self._request("GET", "/runs/" + urllib.parse.quote(name, safe="") + "/results" + q, stream=True) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)

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


def read_suite(path):
    """Reads a JSON Lines suite; a bad line names itself."""
    evals = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except ValueError as err:
                raise SystemExit(f"{path}:{n}: not JSON: {err}")
            if not isinstance(e, dict) or "spec" not in e:
                raise SystemExit(f'{path}:{n}: want {{"eval_id"?, "spec", "require"?}}')
            evals.append(e)
    if not evals:
        raise SystemExit(f"{path}: no evals")
    return evals


def print_summary(s, out=sys.stdout):
    print(f"run {s['name']} (pool {s['pool']}, {s['size']} evals)", file=out)
    print(f"  passed {s['passed']}, failed {s['failed']}, errored {s['errored']}, "
          f"cancelled {s['cancelled']}, running {s['running']}, pending {s['pending']}", file=out)
    if s["pass_rate"] >= 0:
        print(f"  pass rate {100 * s['pass_rate']:.1f}%", file=out)
    if s.get("mean_score") is not None:
        print(f"  score mean {s['mean_score']:.3f}, median {s['median_score']:.3f}", file=out)
    for f in s["failures"][:20]:
        print(f"  {f['status']} {f['key']} {f.get('error', '')}".rstrip(), file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Submit a suite to evalpool and gate on its pass rate.")
    ap.add_argument("--url", default=os.environ.get("EVALPOOL_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--token", default=os.environ.get("EVALPOOL_AUTH_TOKEN"))
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", help="submit a JSON Lines suite as a run, wait, print its summary")
    s.add_argument("file")
    s.add_argument("--name")
    s.add_argument("--min-pass-rate", type=float, default=1.0)
    s.add_argument("--no-wait", action="store_true")
    m = sub.add_parser("summary", help="print a run's summary")
    m.add_argument("name")
    m.add_argument("--compare")
    m.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    c = Client(args.url, token=args.token)
    try:
        if args.command == "summary":
            summary = c.summary(args.name, compare=args.compare)
            if args.json:
                json.dump(summary, sys.stdout, indent=2)
                print()
            else:
                print_summary(summary)
            return 0
        run = c.submit_run(read_suite(args.file), name=args.name)
        print(run["name"])
        if args.no_wait:
            return 0
        c.wait(run["name"])
        summary = c.summary(run["name"])
    except APIError as e:
        print(f"evalpool: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    if 0 <= summary["pass_rate"] < args.min_pass_rate:
        print(f"evalpool: run {summary['name']} passed {100 * summary['pass_rate']:.1f}%, "
              f"under the {100 * args.min_pass_rate:.1f}% required", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
