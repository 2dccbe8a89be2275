#!/usr/bin/env python3
"""Builds sals-calibrate's default calibration corpus from Debian-packaged text.

The same redistributable sources as the demo model's training corpus (tools/train/make_corpus.py:
the King James Bible, the Python 3.11 documentation, the Debian Reference, four license texts),
written as JSON lines, one document a line ({"text": ...}), the sources interleaved so that a run
cut short by --max-tokens still sees all of them. About 8 MB of English text: some 2M tokens with
Llama-3's tokenizer, the size of the SALS paper's calibration (512 sequences of 4096 tokens).

General English text suits general chat and instruction models; for a model of another domain
(code, another language) calibrate on text of that domain instead (see tools/calibrate/README.md).

  apt-get update    # once; the packages are fetched with `apt-get download`, not installed
  python3 tools/calibrate/make_calibration_corpus.py --out build/calibration
  build/tools/calibrate/sals-calibrate --model DIR --data build/calibration/calibration.jsonl

Output (in --out): calibration.jsonl, manifest.json (package versions, documents and characters
per source, sha256 of calibration.jsonl). The same package versions give the same bytes.
"""

import argparse
import hashlib
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
import make_corpus  # noqa: E402


def interleave(sources):
    """Documents of every source in turn (round-robin), each source in its own order."""
    out = []
    for group in itertools.zip_longest(*sources.values()):
        out += [d for d in group if d is not None]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for calibration.jsonl and manifest.json")
    ap.add_argument("--cache", default="build/calibration-debs",
                    help="where the .debs are downloaded and unpacked")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sources, versions = make_corpus.documents_by_source(args.cache)
    lines = [json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in interleave(sources)]
    data = "".join(lines).encode("utf-8")
    with open(os.path.join(args.out, "calibration.jsonl"), "wb") as f:
        f.write(data)
    make_corpus.write_manifest(args.out, {
        "packages": versions,
        "sources": make_corpus.source_stats(sources),
        "documents": len(lines),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    })


if __name__ == "__main__":
    main()
