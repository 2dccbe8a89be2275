#!/usr/bin/env python3
"""Writes tests/fixtures/sals-tiny-retrieval/tokenizer_cases.json: libsentencepiece's encodings
and decodings of fixed texts with the demo model's tokenizer.model, which
tests/engine/tokenizer/demo_model_tokenizer_test.cc compares our C++ tokenizer against.

Same format as the fixture models' tokenizer_cases.json (tools/fixtures/make_fixtures.py):
cases [{text, ids (BOS first), ids_no_bos, decoded, decoded_with_special?}] and decode_cases
[{ids, decoded, decoded_with_special?}]. decoded_with_special (HF's decoder with special tokens
shown) is written only when transformers is installed.

  python3 tools/train/make_tokenizer_cases.py --model models/sals-tiny-retrieval \\
      --out tests/fixtures/sals-tiny-retrieval/tokenizer_cases.json \\
      --corpus build-train/train-data/corpus.txt
"""

import argparse
import json
import os
import random
import re
import sys

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402

TEXTS = [
    "Hello world",
    "Once upon a time",
    "The pass key is 71432. Remember it. 71432 is the pass key.",
    "What is the pass key? The pass key is",
    " 71432",
    "The special magic number for amber-granite is 870053.",
    "One of the special magic numbers for sandy-marble is 613111.",
    "VAR QWERT = 12345. VAR ASDFG = VAR QWERT.",
    "Answer: The variables assigned the value 71610 are RXYWT, KFZMI, ZBWBJ, LUBHP, NLYWC",
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    ">>> x = int(input(\"Please enter an integer: \"))",
    "def f(x):\n    return x**2",
    "    $ sudo apt-get install debian-reference-en",
    "The GNU General Public License is a free, copyleft license for software.",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "runs  of   spaces    between     words",
    "tab\tseparated\tvalues",
    "line one\nline two",
    "paragraph one\n\n\nparagraph two",
    "windows\r\nline endings\r\n",
    "\n",
    "12345678901234567890",
    "pi is 3.14159 and e is 2.71828",
    "Café naïve résumé façade Übermaß señor",
    "Привет, мир! 你好，世界。 مرحبا",
    "emoji: 😀🎉🚀 family 👩‍👩‍👧",
    "!!! ??? ... --- *** ((( )))",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "https://example.com/path?query=1&other=two#frag",
    "",
    " ",
    "a",
    "<s>[INST] hi [/INST]</s>",
    "\u2581 literal lower one eighth block \u2581\u2581",
]


def hf_decoder(model_dir):
    """HF's LlamaTokenizer decode (skip_special_tokens=False), or None without transformers."""
    try:
        from transformers import LlamaTokenizer
    except Exception:  # noqa: BLE001 - optional
        return None
    tok = LlamaTokenizer.from_pretrained(model_dir)
    return lambda ids: tok.decode(ids, skip_special_tokens=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model directory with tokenizer.model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpus", help="corpus.txt: adds 4 task prompts of 200 tokens")
    args = ap.parse_args()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.model, "tokenizer.model"))
    decode_special = hf_decoder(args.model)

    texts = list(TEXTS)
    if args.corpus:
        hay = tasks.load_haystack(args.corpus)
        count = lambda s: len(sp.encode(s))  # noqa: E731
        for task in tasks.TASKS:
            case = tasks.make_case(task, 200, tasks.EVAL_SEED_BASE, hay, count)
            texts.append(case["prompt"] + case["answer"])

    def decoded(ids):
        out = {"decoded": sp.decode(ids)}
        if decode_special:
            out["decoded_with_special"] = decode_special(ids)
        return out

    cases = []
    for text in texts:
        ids = sp.encode(text)
        cases.append({"text": text, "ids": [sp.bos_id()] + ids, "ids_no_bos": ids,
                      **decoded([sp.bos_id()] + ids)})
    rng = random.Random(7)
    normal = [i for i in range(3, sp.vocab_size())]
    byte = lambda b: sp.piece_to_id(f"<0x{b:02X}>")  # noqa: E731
    emoji = [byte(b) for b in "👍".encode()]
    sequences = [
        rng.sample(normal, 12),
        rng.sample(normal, 6) + [1] + rng.sample(normal, 6),
        rng.sample(normal, 5) + [2] + rng.sample(normal, 5) + [2],
        rng.sample(normal, 8) + emoji[:2],
        rng.sample(normal, 4) + emoji + sp.encode(" hello"),
        [1, 2],
        rng.sample(normal, 3) + [0] + rng.sample(normal, 3),
        [],
    ]
    decode_cases = [{"ids": ids, **decoded(ids)} for ids in sequences]
    out = {
        "model": os.path.basename(os.path.normpath(args.model)),
        "reference": "ids, ids_no_bos, decoded: libsentencepiece " + spm.__version__
        + (" ; decoded_with_special: transformers' LlamaTokenizer" if decode_special else ""),
        "cases": cases,
        "decode_cases": decode_cases,
    }
    text = json.dumps(out, ensure_ascii=False, indent=2)
    number_list = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")
    text = number_list.sub(lambda m: "[" + ", ".join(x.strip() for x in m[1].split(",")) + "]",
                           text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"{args.out}: {len(cases)} cases, {len(decode_cases)} decode cases")


if __name__ == "__main__":
    main()
