#!/usr/bin/env python3
"""An example grader: the compose stack's executor-3 runs it for each eval
through `evalpool executor --exec`. The eval's spec comes on stdin and the
result goes to stdout as one JSON object; anything else (progress, logs) goes
to stderr.

The spec it grades:

    {"answer": "4", "expected": "4"}

passes when the answer, stripped and compared case-insensitively, is the
expected one. Besides its score it reports a metric, "exact_match": 1 when
the answer is the expected one to the letter. "sleep_ms" stands in for a
model's time to answer. A spec with no "expected" fails, with the reason in
the output.
"""
import json
import sys
import time


def grade(spec):
    if not isinstance(spec, dict):
        return {"status": "failed", "score": 0, "output": {"reason": "the spec is not a JSON object"}}
    time.sleep(max(0, spec.get("sleep_ms", 0)) / 1000)
    if "expected" not in spec:
        return {"status": "failed", "score": 0, "output": {"reason": "the spec has no \"expected\""}}
    answer = str(spec.get("answer", "")).strip().casefold()
    expected = str(spec["expected"]).strip().casefold()
    passed = answer == expected
    return {
        "status": "passed" if passed else "failed",
        "score": 1 if passed else 0,
        "metrics": {"exact_match": 1 if str(spec.get("answer", "")) == str(spec["expected"]) else 0},
        "output": {"answer": spec.get("answer"), "expected": spec["expected"]},
    }


def main():
    json.dump(grade(json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
