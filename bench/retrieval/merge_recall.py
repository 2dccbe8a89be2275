#!/usr/bin/env python3
"""Merges two sals-retrieval JSON reports: accuracy from a large run measured without recall
(--recall-cases 0), attention-mass recall from a smaller run of the same case file
(--max-cases N --recall-cases N). Recall on the dense CPU reference costs seconds per 4K case,
while the CUDA engine passes of hundreds of cases take seconds in all, so the two are measured
apart. The output is a report plot.py reads; `recall_from` records where recall came from.

  python3 bench/retrieval/merge_recall.py ACC.json RECALL.json --out MERGED.json [--compact]

--compact keeps per case only task, length, seed, prompt tokens, answer and, per configuration,
correct, recall and (for wrong answers) the output: a file small enough to commit.
"""

import argparse
import json
import sys

from merge_configs import compact  # the same slimmed case rows (beside this script)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("accuracy", help="report of the large run (its recall is replaced)")
    ap.add_argument("recall", help="report of the recall run (same cases, fewer per group)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compact", action="store_true")
    args = ap.parse_args()
    with open(args.accuracy, encoding="utf-8") as f:
        acc = json.load(f)
    with open(args.recall, encoding="utf-8") as f:
        rec = json.load(f)

    rows = {(r["task"], r["config"], r["length"]): r.get("recall") for r in rec["results"]}
    totals = {t["config"]: t.get("recall") for t in rec["totals"]}
    merged = 0
    for r in acc["results"]:
        key = (r["task"], r["config"], r["length"])
        if rows.get(key):
            r["recall"] = rows[key]
            merged += 1
    for t in acc["totals"]:
        if totals.get(t["config"]):
            t["recall"] = totals[t["config"]]
    per_case = {}
    for c in rec["cases"]:
        for name, res in c["results"].items():
            if "recall" in res:
                per_case[(c["task"], c["length"], c["seed"], name)] = res["recall"]
    for c in acc["cases"]:
        for name, res in c["results"].items():
            v = per_case.get((c["task"], c["length"], c["seed"], name))
            if v is not None:
                res["recall"] = v
    if not merged:
        sys.exit("merge_recall.py: no (task, config, length) of the recall run is in the "
                 "accuracy run")
    acc["recall_seconds"] = rec.get("recall_seconds")
    acc["recall_from"] = {"cases_file": rec.get("cases_file"), "num_cases": rec.get("num_cases"),
                          "backend": rec.get("backend"), "rows_merged": merged}
    if args.compact:
        acc = compact(acc)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(acc, f, indent=None if args.compact else 2, separators=(",", ":")
                  if args.compact else None)
        f.write("\n")
    print(f"merge_recall.py: wrote {args.out} ({merged} result rows with recall)")


if __name__ == "__main__":
    main()
