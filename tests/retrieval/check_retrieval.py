#!/usr/bin/env python3
"""End-to-end check of the retrieval benchmark (ctest): make_cases.py writes a small case set,
sals-retrieval runs it on the CPU for dense and SALS-12.5%, and the JSON must hold together:
counts add up, accuracies lie in [0, 1], recall in (0, 1]. With --min-dense-passkey (CMake's
SALS_RETRIEVAL_CHECK_ACCURACY, on by default: models/default retrieves) dense passkey accuracy
must reach that value. When matplotlib is installed, plot.py must write its PNG too.
"""

import argparse
import json
import os
import subprocess
import sys


def fail(message):
    sys.exit(f"check_retrieval.py: FAIL: {message}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runner", required=True, help="the sals-retrieval binary")
    ap.add_argument("--source", required=True, help="repository root")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="folder for cases, JSON and PNG")
    ap.add_argument("--cases", type=int, default=2, help="cases per task")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--min-dense-passkey", type=float, default=None)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    cases = os.path.join(args.out, "cases.jsonl")
    out_json = os.path.join(args.out, "retrieval.json")
    subprocess.run([sys.executable, os.path.join(args.source, "bench/retrieval/make_cases.py"),
                    "--out", cases, "--lengths", str(args.length), "--cases", str(args.cases)],
                   check=True)
    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        layers = json.load(f)["num_hidden_layers"]
    cmd = [args.runner, "--model", args.model, "--cases", cases, "--configs", "dense,sals-12.5",
           "--json", out_json, "--recall-cases", "1"]
    if layers <= 3:
        # The default dense layers (first two and last) would leave nothing sparse.
        cmd += ["--dense-layers", "0"]
    print(" ".join(cmd), flush=True)
    # One OpenMP thread: ctest runs tests side by side, and threads spinning at OpenMP barriers on
    # shared cores slow the CPU backend down several times.
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))

    with open(out_json, encoding="utf-8") as f:
        report = json.load(f)
    with open(cases, encoding="utf-8") as f:
        lines = [json.loads(l) for l in f if l.strip()]
    n = len(lines)
    tasks = sorted({c["task"] for c in lines})
    if report["num_cases"] != n or len(report["cases"]) != n:
        fail(f"{n} cases written, report has {report['num_cases']} / {len(report['cases'])}")
    names = [c["name"] for c in report["configs"]]
    if names != ["dense", "sals-12.5"] or any(c["status"] != "ok" for c in report["configs"]):
        fail(f"configs {report['configs']}")
    for name in names:
        rows = [r for r in report["results"] if r["config"] == name]
        if sorted(r["task"] for r in rows) != tasks:
            fail(f"{name}: rows for tasks {[r['task'] for r in rows]}, expected {tasks}")
        if sum(r["cases"] for r in rows) != n:
            fail(f"{name}: {sum(r['cases'] for r in rows)} cases in the rows, {n} run")
        total = next(t for t in report["totals"] if t["config"] == name)
        correct = sum(1 for c in report["cases"] if c["results"][name]["correct"])
        if total["cases"] != n or total["correct"] != correct or \
                sum(r["correct"] for r in rows) != correct:
            fail(f"{name}: totals {total} disagree with {correct} correct cases")
        for r in rows:
            if not 0.0 <= r["accuracy"] <= 1.0 or not 0.0 <= r["score"] <= 1.0:
                fail(f"{name}: accuracy out of range in {r}")
            if abs(r["accuracy"] - r["correct"] / r["cases"]) > 1e-9:
                fail(f"{name}: accuracy {r['accuracy']} != {r['correct']}/{r['cases']}")
            recall = r["recall"]
            if name == "dense":
                if recall is not None:
                    fail(f"dense has a recall: {recall}")
            elif recall is None or not 0.0 < recall["mean"] <= 1.0 + 1e-9 or \
                    not 0.0 < recall["min"] <= recall["mean"] + 1e-9 or recall["cases"] != 1:
                fail(f"{name}: recall out of range in {r}")
    for c in report["cases"]:
        if c["prompt_tokens"] < 1 or set(c["results"]) != set(names):
            fail(f"case {c['task']}/{c['seed']}: {c['prompt_tokens']} tokens, {list(c['results'])}")

    if args.min_dense_passkey is not None:
        row = next(r for r in report["results"] if r["config"] == "dense" and r["task"] == "passkey")
        if row["accuracy"] < args.min_dense_passkey:
            fail(f"dense passkey accuracy {row['accuracy']} < {args.min_dense_passkey}")

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("check_retrieval.py: matplotlib not installed, plot.py not checked")
    else:
        png = os.path.join(args.out, "retrieval.png")
        subprocess.run([sys.executable, os.path.join(args.source, "bench/retrieval/plot.py"),
                        out_json, "--out", png], check=True)
        if not os.path.getsize(png) > 0:
            fail("plot.py wrote an empty PNG")
    print(f"check_retrieval.py: OK ({n} cases, {len(names)} configurations)")


if __name__ == "__main__":
    main()
