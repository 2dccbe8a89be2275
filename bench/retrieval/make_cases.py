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
form-feed line; a plain text file is one document; a .gz file is read through gzip). The default,
tests/fixtures/calibration.txt (four license texts, the "licenses" part of the demo model's
corpus), is in the repository, so CI needs nothing else; pass the whole corpus
(build-train/train-data/corpus.txt) for larger runs.

--cases is one count for every length or one per length (--lengths 4096,8192,16384,32720
--cases 200,200,200,600). --jobs N builds the cases in N processes (the same file as one: each
case depends only on its task, length and seed); fitting a 32K prompt takes about 0.1 s.

  python3 bench/retrieval/make_cases.py --out out/retrieval/cases.jsonl \\
      --lengths 1024,2048,4096 --cases 20 --haystack build-train/train-data/corpus.txt
"""

import argparse
import json
import multiprocessing
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
        raise argparse.ArgumentTypeError(f"values must be positive: {text!r}")
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


_STATE = {}  # per process: the haystack and the token counter


def init_state(haystack_paths, tokenizer):
    _STATE["haystack"] = tasks.load_haystack(haystack_paths)
    _STATE["count"] = token_counter(tokenizer) if tokenizer else None


def case_line(job):
    task, length, seed = job
    case = tasks.make_case(task, length, seed, _STATE["haystack"], _STATE["count"])
    return json.dumps(
        {"task": case["task"], "length": case["length"], "seed": case["seed"],
         "prompt": case["prompt"], "answer": case["answer"], "items": case["items"]},
        ensure_ascii=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSONL file to write ('-' = stdout)")
    ap.add_argument("--tasks", default=",".join(tasks.TASKS),
                    help=f"comma-separated, of: {', '.join(tasks.TASKS)}")
    ap.add_argument("--lengths", type=int_list, default=[1024, 2048, 4096],
                    help="prompt lengths in tokens, comma-separated")
    ap.add_argument("--cases", type=int_list, default=[10],
                    help="cases per task and length: one count, or one per --lengths entry")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds are EVAL_SEED_BASE + first_seed + i")
    ap.add_argument("--haystack", nargs="+", default=[DEFAULT_HAYSTACK],
                    help="corpus.txt file(s) (make_corpus.py) or plain text")
    ap.add_argument("--tokenizer", help="SentencePiece tokenizer.model: fit exact token lengths")
    ap.add_argument("--jobs", type=int, default=1, help="processes building the cases")
    args = ap.parse_args()

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in tasks.TASKS]
    if unknown or not names:
        sys.exit(f"make_cases.py: unknown task(s) {unknown} (known: {', '.join(tasks.TASKS)})")
    if len(args.cases) == 1:
        args.cases = args.cases * len(args.lengths)
    if len(args.cases) != len(args.lengths):
        sys.exit(f"make_cases.py: --cases has {len(args.cases)} counts for "
                 f"{len(args.lengths)} lengths (give one, or one per length)")
    if args.first_seed < 0 or args.jobs < 1:
        sys.exit("make_cases.py: --first-seed must be >= 0 and --jobs positive")
    for path in args.haystack:
        if not os.path.isfile(path):
            sys.exit(f"make_cases.py: haystack {path}: no such file")

    jobs = [(task, length, tasks.EVAL_SEED_BASE + args.first_seed + i)
            for length, count in zip(args.lengths, args.cases)
            for task in names for i in range(count)]
    init_state(args.haystack, args.tokenizer)  # forked processes share it
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            lines = pool.map(case_line, jobs, chunksize=4)
    else:
        lines = [case_line(job) for job in jobs]
    haystack_chars = len(_STATE["haystack"].text)
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    counts = ",".join(str(c) for c in args.cases)
    print(f"make_cases.py: {len(lines)} cases ({len(names)} tasks x lengths "
          f"{','.join(str(n) for n in args.lengths)} x {counts}), haystack {haystack_chars} chars, "
          f"lengths {'fitted' if args.tokenizer else 'estimated'}", file=sys.stderr)


if __name__ == "__main__":
    main()
