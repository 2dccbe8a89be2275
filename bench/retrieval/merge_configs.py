#!/usr/bin/env python3
"""Joins sals-retrieval JSON reports of the same case file run for different configurations
(one device command each, e.g. `--configs dense`, then `--configs sals-25,sals-12.5`) into one
report that plot.py and merge_recall.py read: configurations, result rows and totals are put
side by side, and each case's results per configuration are merged. The cases must be the same,
in the same order (task, length, seed); a configuration may appear in one report only.

  python3 bench/retrieval/merge_configs.py DENSE.json SALS.json --out ALL.json [--compact]

--compact keeps per case only task, length, seed, prompt tokens, answer and, per configuration,
correct, recall and (for wrong answers) the output: a file small enough to commit.
"""

import argparse
import json
import sys


def case_key(c):
    return (c["task"], c["length"], c["seed"])


def merge(reports):
    """One report from several of the same cases; raises ValueError when they do not match."""
    out = json.loads(json.dumps(reports[0]))  # a deep copy
    keys = [case_key(c) for c in out["cases"]]
    names = {c["name"] for c in out["configs"]}
    for i, rep in enumerate(reports[1:], start=2):
        if [case_key(c) for c in rep["cases"]] != keys:
            raise ValueError(f"report {i} has other cases than the first "
                             f"({rep.get('cases_file')} vs {out.get('cases_file')})")
        for c in rep["configs"]:
            if c["name"] in names:
                raise ValueError(f"configuration {c['name']} is in more than one report")
            names.add(c["name"])
            out["configs"].append(c)
        out["results"] += rep["results"]
        out["totals"] += rep["totals"]
        for mine, theirs in zip(out["cases"], rep["cases"]):
            mine["results"].update(theirs["results"])
        out["recall_seconds"] = (out.get("recall_seconds") or 0) + (rep.get("recall_seconds") or 0)
    return out


def compact(report):
    def slim(r):
        keep = ("correct", "recall") if r.get("correct") else ("correct", "output", "recall")
        return {k: v for k, v in r.items() if k in keep}

    report["cases"] = [{"task": c["task"], "length": c["length"], "seed": c["seed"],
                        "prompt_tokens": c.get("prompt_tokens"), "answer": c.get("answer"),
                        "results": {n: slim(r) for n, r in c["results"].items()}}
                       for c in report["cases"]]
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", help="sals-retrieval --json reports, same case file")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compact", action="store_true")
    args = ap.parse_args()
    reports = []
    for path in args.reports:
        with open(path, encoding="utf-8") as f:
            reports.append(json.load(f))
    try:
        merged = merge(reports)
    except ValueError as e:
        sys.exit(f"merge_configs.py: {e}")
    if args.compact:
        merged = compact(merged)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=None if args.compact else 2,
                  separators=(",", ":") if args.compact else None)
        f.write("\n")
    print(f"merge_configs.py: wrote {args.out} ({len(merged['cases'])} cases, configurations "
          f"{', '.join(c['name'] for c in merged['configs'])})")


if __name__ == "__main__":
    main()
