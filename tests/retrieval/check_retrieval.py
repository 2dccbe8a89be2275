#!/usr/bin/env python3
"""End-to-end check of the retrieval benchmark (ctest): make_cases.py writes a small case set,
sals-retrieval runs it on the CPU for dense and SALS-12.5%, and the JSON must hold together:
counts add up, accuracies lie in [0, 1], recall in (0, 1]. With --min-dense-passkey and
--min-sals-passkey (CMake's SALS_RETRIEVAL_CHECK_ACCURACY, on by default: models/default
retrieves) dense and SALS-12.5% passkey accuracy must reach those values, and with
--recall-above-random SALS recall must beat a random pick's. When matplotlib is installed,
plot.py must write its PNG too. --self-test checks these checks on made-up reports.
"""

import argparse
import json
import os
import subprocess
import sys


def fail(message):
    sys.exit(f"check_retrieval.py: FAIL: {message}")


def check_report(report, lines, min_dense_passkey=None, min_sals_passkey=None,
                 recall_above_random=False):
    """What is wrong with a report of `lines` (the cases) run for dense and sals-12.5: a list of
    messages, empty when it holds together and meets the bars given."""
    problems = []
    n = len(lines)
    tasks = sorted({c["task"] for c in lines})
    if report["num_cases"] != n or len(report["cases"]) != n:
        return [f"{n} cases written, report has {report['num_cases']} / {len(report['cases'])}"]
    names = [c["name"] for c in report["configs"]]
    if names != ["dense", "sals-12.5"] or any(c["status"] != "ok" for c in report["configs"]):
        return [f"configs {report['configs']}"]
    for name in names:
        rows = [r for r in report["results"] if r["config"] == name]
        if sorted(r["task"] for r in rows) != tasks:
            problems.append(f"{name}: rows for tasks {[r['task'] for r in rows]}, expected {tasks}")
            continue
        if sum(r["cases"] for r in rows) != n:
            problems.append(f"{name}: {sum(r['cases'] for r in rows)} cases in the rows, {n} run")
        total = next(t for t in report["totals"] if t["config"] == name)
        correct = sum(1 for c in report["cases"] if c["results"][name]["correct"])
        if total["cases"] != n or total["correct"] != correct or \
                sum(r["correct"] for r in rows) != correct:
            problems.append(f"{name}: totals {total} disagree with {correct} correct cases")
        for r in rows:
            if not 0.0 <= r["accuracy"] <= 1.0 or not 0.0 <= r["score"] <= 1.0:
                problems.append(f"{name}: accuracy out of range in {r}")
            if abs(r["accuracy"] - r["correct"] / r["cases"]) > 1e-9:
                problems.append(f"{name}: accuracy {r['accuracy']} != {r['correct']}/{r['cases']}")
            recall = r["recall"]
            if name == "dense":
                if recall is not None:
                    problems.append(f"dense has a recall: {recall}")
            elif recall is None or not 0.0 < recall["mean"] <= 1.0 + 1e-9 or \
                    not 0.0 < recall["min"] <= recall["mean"] + 1e-9 or recall["cases"] != 1:
                problems.append(f"{name}: recall out of range in {r}")
            elif recall_above_random and not recall["mean"] > recall["random"]:
                # A random pick of as many tokens keeps about the selected fraction of the mass:
                # the selection must do better than that.
                problems.append(f"{name}/{r['task']}: recall {recall['mean']:.3f} is no better "
                                f"than a random pick's {recall['random']:.3f}")
    for c in report["cases"]:
        if c["prompt_tokens"] < 1 or set(c["results"]) != set(names):
            problems.append(
                f"case {c['task']}/{c['seed']}: {c['prompt_tokens']} tokens, {list(c['results'])}")

    for name, bar in (("dense", min_dense_passkey), ("sals-12.5", min_sals_passkey)):
        if bar is None:
            continue
        row = next((r for r in report["results"] if r["config"] == name and
                    r["task"] == "passkey"), None)
        if row is None or row["accuracy"] < bar:
            problems.append(f"{name} passkey accuracy {row and row['accuracy']} < {bar}")
    return problems


def self_test():
    """check_report on made-up reports: a sound one passes, and each way a SALS run can be
    worthless (recall no better than a random pick, passkey lost) is caught."""
    lines = [{"task": "passkey"}, {"task": "multikey"}]

    def report(sals_correct, recall_mean, random_recall):
        results, totals, cases = [], [], []
        for name, correct in (("dense", [True, True]), ("sals-12.5", sals_correct)):
            for task, ok in zip(("passkey", "multikey"), correct):
                recall = None if name == "dense" else {
                    "mean": recall_mean, "min": recall_mean, "random": random_recall,
                    "cases": 1}
                results.append({"config": name, "task": task, "cases": 1, "correct": int(ok),
                                "accuracy": float(ok), "score": float(ok), "recall": recall})
            totals.append({"config": name, "cases": 2, "correct": sum(correct)})
        for i, task in enumerate(("passkey", "multikey")):
            cases.append({"task": task, "seed": i, "prompt_tokens": 500, "results": {
                "dense": {"correct": True}, "sals-12.5": {"correct": sals_correct[i]}}})
        return {"num_cases": 2, "cases": cases, "results": results, "totals": totals,
                "configs": [{"name": "dense", "status": "ok"},
                            {"name": "sals-12.5", "status": "ok"}]}

    strict = dict(min_dense_passkey=0.5, min_sals_passkey=0.5, recall_above_random=True)
    good = check_report(report([True, True], 0.8, 0.2), lines, **strict)
    assert not good, good
    random_pick = check_report(report([True, True], 0.2, 0.2), lines, **strict)
    assert any("random pick" in p for p in random_pick), random_pick
    lost = check_report(report([False, True], 0.8, 0.2), lines, **strict)
    assert any("sals-12.5 passkey accuracy" in p for p in lost), lost
    # Without the bars (a model that does not retrieve), only consistency is checked.
    assert not check_report(report([False, True], 0.2, 0.2), lines)
    print("check_retrieval.py: self-test OK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--self-test", action="store_true",
                    help="check check_report on made-up reports, and nothing else")
    ap.add_argument("--runner", help="the sals-retrieval binary")
    ap.add_argument("--source", help="repository root")
    ap.add_argument("--model")
    ap.add_argument("--out", help="folder for cases, JSON and PNG")
    ap.add_argument("--cases", type=int, default=2, help="cases per task")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--min-dense-passkey", type=float, default=None)
    ap.add_argument("--min-sals-passkey", type=float, default=None,
                    help="SALS-12.5% passkey accuracy must reach this")
    ap.add_argument("--recall-above-random", action="store_true",
                    help="SALS recall must beat a random pick of as many tokens")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return
    if not (args.runner and args.source and args.model and args.out):
        ap.error("--runner, --source, --model and --out are needed")

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
    problems = check_report(report, lines, args.min_dense_passkey, args.min_sals_passkey,
                            args.recall_above_random)
    if problems:
        fail("; ".join(problems))
    n = len(lines)
    names = [c["name"] for c in report["configs"]]

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
