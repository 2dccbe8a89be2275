#!/usr/bin/env python3
"""Writes the SALS calibration text of the demo model: what it will serve, i.e. natural text from
its corpus and retrieval-task prompts (training seeds, never the evaluation seeds), mixed.

  python3 tools/train/make_calibration_text.py --data build-train/train-data \\
      --out build-train/calibration.txt
  build-train/tools/calibrate/sals-calibrate --model models/sals-tiny-retrieval \\
      --data build-train/calibration.txt --seq_len 2048

sals-calibrate cuts the token stream into --seq_len sequences; the pieces here are about that
long, so most sequences hold one excerpt or one task prompt.
"""

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402

# Below TRAIN_SEED_LIMIT (training range) and far from the seeds a short training run draws.
CALIBRATION_SEED_BASE = 999_000_000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder with corpus.txt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pieces", type=int, default=32, help="half excerpts, half task prompts")
    ap.add_argument("--length", type=int, default=2000, help="tokens per piece (approximate)")
    args = ap.parse_args()
    hay = tasks.load_haystack(os.path.join(args.data, "corpus.txt"))
    rng = random.Random("sals-calibration")
    pieces = []
    for i in range(args.pieces):
        if i % 2 == 0:
            pieces.append(hay.excerpt(rng, int(args.length * tasks.CHARS_PER_TOKEN)))
        else:
            task = tasks.TASKS[(i // 2) % len(tasks.TASKS)]
            case = tasks.make_case(task, args.length, CALIBRATION_SEED_BASE + i, hay)
            pieces.append(case["prompt"] + case["answer"])
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n\n".join(pieces) + "\n")
    print(f"{args.out}: {len(pieces)} pieces, {sum(len(p) for p in pieces)} characters")


if __name__ == "__main__":
    main()
