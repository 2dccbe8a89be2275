#!/usr/bin/env python3
"""Trains the demo model's SentencePiece tokenizer and pre-tokenizes its corpus.

Reads DATA/corpus.txt (make_corpus.py) and writes into DATA:
  tokenizer.model    SentencePiece BPE, vocab --vocab (4096), settings our C++ tokenizer supports
                     (engine/tokenizer/sentencepiece_model.h): identity normalizer, dummy prefix,
                     byte fallback, digits split (numbers are read digit by digit, which helps
                     copying them), <unk>=0 <s>=1 </s>=2, byte pieces 3..258
  corpus_ids.bin     the corpus as uint16 token ids, each document as [<s>] + ids + [</s>]
  prepare.json       sizes, and the haystack's measured characters per token (tasks.py's
                     CHARS_PER_TOKEN comes from it)

Needs the sentencepiece package (no torch). Deterministic: one thread, fixed inputs.

  python3 tools/train/prepare.py --data build-train/train-data
"""

import argparse
import io
import json
import os
import random
import statistics
import sys
from array import array

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402


def tokenizer_lines(docs, seed):
    """Training sentences: corpus lines (long ones split at sentence ends) plus the task texts
    without haystack, so template words and key words get their own pieces."""
    lines = []
    for doc in docs:
        for line in doc.splitlines():
            if not line.strip():
                continue
            while len(line) > 2000:
                cut = line.rfind(". ", 0, 2000)
                cut = cut + 2 if cut > 0 else 2000
                lines.append(line[:cut])
                line = line[cut:]
            lines.append(line)
    empty = tasks.Haystack(["."])
    for i in range(2000):
        task = tasks.TASKS[i % len(tasks.TASKS)]
        case = tasks.make_case(task, 1, seed + i, empty)
        lines += [l for l in (case["prompt"] + case["answer"]).splitlines() if l.strip()]
    return lines


def train_tokenizer(lines, vocab_size):
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=proto,  # in memory: no local paths end up in the trainer spec
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9999,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        input_sentence_size=0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_surface=" \u2047 ",
        num_threads=1,
        minloglevel=2,
    )
    return proto.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder with corpus.txt; outputs go there too")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    docs = tasks.load_corpus(os.path.join(args.data, "corpus.txt"))
    model = train_tokenizer(tokenizer_lines(docs, args.seed), args.vocab)
    with open(os.path.join(args.data, "tokenizer.model"), "wb") as f:
        f.write(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert sp.vocab_size() == args.vocab and sp.bos_id() == 1 and sp.eos_id() == 2

    ids = array("H")
    for doc in docs:
        ids.append(sp.bos_id())
        ids.extend(sp.encode(doc))
        ids.append(sp.eos_id())
    with open(os.path.join(args.data, "corpus_ids.bin"), "wb") as f:
        ids.tofile(f)

    # Haystack density, for tasks.CHARS_PER_TOKEN: random 8K-character excerpts.
    hay = tasks.Haystack(docs)
    rng = random.Random(args.seed)
    ratios = []
    for _ in range(2000):
        text = hay.excerpt(rng, 8192)
        ratios.append(len(text) / len(sp.encode(text)))
    ratios.sort()
    info = {
        "vocab_size": sp.vocab_size(),
        "corpus_chars": sum(len(d) for d in docs),
        "corpus_tokens": len(ids),
        "haystack_chars_per_token": {
            "mean": round(statistics.fmean(ratios), 3),
            "p05": round(ratios[len(ratios) // 20], 3),
            "p95": round(ratios[-len(ratios) // 20], 3),
        },
    }
    with open(os.path.join(args.data, "prepare.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    json.dump(info, sys.stdout, indent=2)
    print()
    sample = "The pass key is 71432. VAR QWERT = VAR ASDFG. special magic number for amber-fox"
    print([sp.id_to_piece(i) for i in sp.encode(sample)])


if __name__ == "__main__":
    main()
