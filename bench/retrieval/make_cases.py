#!/usr/bin/env python3
"""Writes the retrieval benchmark's cases (JSONL) from tools/train/tasks.py's generators.

One JSON object per line: {"task", "length", "seed", "prompt", "answer", "items"} (tasks.py's
make_case; `answer` is the continuation the model should produce, `items` the values it must
contain). Seeds are tasks.EVAL_SEED_BASE + i (>= 10**9): the training data never uses them.

Lengths are prompt tokens of the demo model's tokenizer. Without --tokenizer they are estimated
from tasks.CHARS_PER_TOKEN (a prompt is typically within +-10% of its length); sals-retrieval
reports the real counts. With --tokenizer (a SentencePiece tokenizer.model; needs the
sentencepiece package, unlike the rest of this script) prompts are fitted to at most `length`
tokens, BOS not counted.

The haystack is natural text in make_corpus.py's corpus.txt format (documents separated by a
form-feed line; a plain text file is one document). The default, tests/fixtures/calibration.txt
(four license texts, the "licenses" part of the demo model's corpus), is in the repository, so CI
needs nothing else; pass the whole corpus (build-train/train-data/corpus.txt) for larger runs.

  python3 bench/retrieval/make_cases.py --out out/retrieval/cases.jsonl \\
      --lengths 1024,2048,4096 --cases 20 --haystack build-train/train-data/corpus.txt
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools", "train"))
import tasks  # noqa: E402  (tools/train/tasks.py: stdlib only)

DEFAULT_HAYSTACK = os.path.join(REPO, "tests", "fixtures", "calibration.txt")


def int_list(text):
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"lengths must be positive: {text!r}")
    return values


def token_counter(path):
    """len(encode(text)) with a SentencePiece model, for exact prompt lengths."""
    try:
        import sentencepiece as spm
    except ImportError:
        sys.exit("make_cases.py: --tokenizer needs the sentencepiece package "
                 "(pip install sentencepiece); leave it out to estimate lengths instead")
    sp = spm.SentencePieceProcessor(model_file=path)
    return lambda text: len(sp.encode(text))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSONL file to write ('-' = stdout)")
    ap.add_argument("--tasks", default=",".join(tasks.TASKS),
                    help=f"comma-separated, of: {', '.join(tasks.TASKS)}")
    ap.add_argument("--lengths", type=int_list, default=[1024, 2048, 4096],
                    help="prompt lengths in tokens, comma-separated")
    ap.add_argument("--cases", type=int, default=10, help="cases per task and length")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds are EVAL_SEED_BASE + first_seed + i")
    ap.add_argument("--haystack", nargs="+", default=[DEFAULT_HAYSTACK],
                    help="corpus.txt file(s) (make_corpus.py) or plain text")
    ap.add_argument("--tokenizer", help="SentencePiece tokenizer.model: fit exact token lengths")
    args = ap.parse_args()

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in tasks.TASKS]
    if unknown or not names:
        sys.exit(f"make_cases.py: unknown task(s) {unknown} (known: {', '.join(tasks.TASKS)})")
    if args.cases < 1 or args.first_seed < 0:
        sys.exit("make_cases.py: --cases must be positive and --first-seed >= 0")
    for path in args.haystack:
        if not os.path.isfile(path):
            sys.exit(f"make_cases.py: haystack {path}: no such file")
    haystack = tasks.load_haystack(args.haystack)
    count_tokens = token_counter(args.tokenizer) if args.tokenizer else None

    lines = []
    for length in args.lengths:
        for task in names:
            for i in range(args.cases):
                seed = tasks.EVAL_SEED_BASE + args.first_seed + i
                case = tasks.make_case(task, length, seed, haystack, count_tokens)
                lines.append(json.dumps(
                    {"task": case["task"], "length": case["length"], "seed": case["seed"],
                     "prompt": case["prompt"], "answer": case["answer"], "items": case["items"]},
                    ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(f"make_cases.py: {len(lines)} cases ({len(names)} tasks x {len(args.lengths)} lengths x "
          f"{args.cases}), haystack {len(haystack.text)} chars, lengths "
          f"{'fitted' if count_tokens else 'estimated'}", file=sys.stderr)


if __name__ == "__main__":
    main()
