#!/usr/bin/env python3
"""Builds the natural-text corpus of the demo model from named Debian packages.

Sources (all redistributable; see models/sals-tiny-retrieval/README.md):
  bible-kjv + bible-kjv-text  the King James Version of the Bible (public domain; the `bible`
                              program of bible-kjv decodes bible-kjv-text's compressed data)
  python3.11-doc              the Python 3.11 documentation's reST sources (PSF License 2.0):
                              tutorial, FAQ, HOWTOs, language reference, glossary, usage, what's new
  debian-reference-en         the Debian Reference, plain-text edition (GPL-2+)
  base-files                  /usr/share/common-licenses: GPL-3, Apache-2.0, MPL-2.0, GFDL-1.3
                              (verbatim copies allowed)

The packages are fetched with `apt-get download` (no installation; run `apt-get update` once
first) into a cache folder and unpacked there with `dpkg -x`. Output (in --out):
  corpus.txt     UTF-8 documents separated by a line holding one form feed ("\\f"); read it with
                 tools/train/tasks.py's load_corpus / load_haystack
  manifest.json  package versions, documents and characters per source, sha256 of corpus.txt

Everything is in a fixed order, so the same package versions give the same bytes.

  python3 tools/train/make_corpus.py --out build-train/train-data
"""

import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys

PACKAGES = ["bible-kjv", "bible-kjv-text", "python3.11-doc", "debian-reference-en"]
PYDOC_SECTIONS = ["tutorial", "faq", "howto", "reference", "glossary", "using", "whatsnew"]
LICENSES = ["GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3"]
DOC_SEPARATOR = "\n\f\n"


def fetch(packages, cache):
    """apt-get download each package (once) and unpack it under cache/root; returns versions."""
    os.makedirs(cache, exist_ok=True)
    root = os.path.join(cache, "root")
    versions = {}
    for name in packages:
        debs = sorted(glob.glob(os.path.join(cache, f"{name}_*.deb")))
        if not debs:
            subprocess.run(["apt-get", "download", name], cwd=cache, check=True)
            debs = sorted(glob.glob(os.path.join(cache, f"{name}_*.deb")))
        deb = debs[-1]
        subprocess.run(["dpkg", "-x", deb, root], check=True)
        versions[name] = subprocess.run(
            ["dpkg-deb", "-f", deb, "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
    return root, versions


def kjv_documents(root):
    """One document per book: the chapters as paragraphs, verse numbers dropped."""
    out = subprocess.run(
        [os.path.join(root, "usr/bin/bible"), "-p", os.path.join(root, "usr/lib"), "-l100000",
         "Gen1:1-Rev22:21"],
        check=True, capture_output=True, text=True,
    ).stdout
    books, chapter = {}, None
    order = []
    for line in out.splitlines():
        head = re.fullmatch(r"(\S.*?) (\d+)", line)
        if head:
            book = head[1]
            if book not in books:
                books[book] = []
                order.append(book)
            chapter = [f"Chapter {head[2]}."]
            books[book].append(chapter)
            continue
        verse = re.fullmatch(r"\s+\d+ (.*)", line)
        if verse and chapter is not None:
            chapter.append(verse[1].strip())
    docs = []
    for book in order:
        paragraphs = [" ".join(ch) for ch in books[book]]
        docs.append(f"The Book of {book}\n\n" + "\n\n".join(paragraphs))
    return docs


ROLE = re.compile(r":[a-zA-Z:+-]+:`(!|~)?([^`<]*?)(?:\s*<[^>]*>)?`")
LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")
LITERAL = re.compile(r"``([^`]+)``")
HEADING = re.compile(r"^([=\-*^~#+\"'`.])\1{3,}\s*$")


def rst_to_text(text):
    """Light reST cleanup: drop directives, comments and heading rules; roles to their text."""
    lines = []
    skipping = False
    for line in text.splitlines():
        if line.startswith(".. "):
            # Directives and comments; their indented option lines follow, prose bodies are kept.
            skipping = True
            continue
        if skipping and re.match(r"^\s+:[\w-]+:", line):
            continue
        skipping = False
        if HEADING.match(line):
            continue
        line = ROLE.sub(lambda m: m[2], line)
        line = LINK.sub(lambda m: m[1], line)
        line = LITERAL.sub(lambda m: m[1], line)
        line = line.replace("`", "")
        if line.endswith("::"):
            line = line[:-1]
        lines.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pydoc_documents(root):
    base = os.path.join(root, "usr/share/doc/python3.11/html/_sources")
    docs = []
    for section in PYDOC_SECTIONS:
        paths = sorted(glob.glob(os.path.join(base, section, "**", "*.rst.txt"), recursive=True))
        paths += sorted(glob.glob(os.path.join(base, section + ".rst.txt")))
        for path in paths:
            with open(path, encoding="utf-8") as f:
                text = rst_to_text(f.read())
            if len(text) > 500:
                docs.append(text)
    return docs


def debref_documents(root):
    path = os.path.join(root, "usr/share/debian-reference/debian-reference.en.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = f.read()
    # Chapters start with "Chapter N. Title" at the start of a line.
    parts = re.split(r"\n(?=Chapter \d+\. )", text)
    return [re.sub(r"[ \t]+\n", "\n", p).strip() for p in parts if len(p.strip()) > 500]


def license_documents():
    docs = []
    for name in LICENSES:
        with open(os.path.join("/usr/share/common-licenses", name), encoding="utf-8") as f:
            docs.append(f.read().replace("\f", "").strip())
    return docs


def clean(doc):
    # No form feeds (the separator), no other control characters except newline and tab.
    doc = doc.replace("\r\n", "\n")
    return "".join(ch for ch in doc if ch in "\n\t" or ord(ch) >= 32).strip()


def documents_by_source(cache):
    """Fetches the packages (into `cache`) and returns ({source: [cleaned documents]}, versions)."""
    root, versions = fetch(PACKAGES, cache)
    base_files = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "base-files"], capture_output=True, text=True
    ).stdout
    versions["base-files"] = base_files or "unknown"
    sources = {
        "kjv": kjv_documents(root),
        "python-docs": pydoc_documents(root),
        "debian-reference": debref_documents(root),
        "licenses": license_documents(),
    }
    return {name: [d for d in (clean(x) for x in docs) if d] for name, docs in sources.items()}, \
        versions


def source_stats(sources):
    return {name: {"documents": len(docs), "chars": sum(len(d) for d in docs)}
            for name, docs in sources.items()}


def write_manifest(out_dir, manifest):
    """manifest.json in out_dir, and the same on stdout."""
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    json.dump(manifest, sys.stdout, indent=2)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for corpus.txt and manifest.json")
    ap.add_argument("--cache", default="build-train/debs", help="where .debs are downloaded and "
                    "unpacked (kept out of --out, which travels to the GPU machine)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sources, versions = documents_by_source(args.cache)
    docs = [d for source_docs in sources.values() for d in source_docs]
    text = DOC_SEPARATOR.join(docs) + "\n"
    path = os.path.join(args.out, "corpus.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    write_manifest(args.out, {
        "packages": versions,
        "sources": source_stats(sources),
        "documents": len(docs),
        "chars": len(text),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    })


if __name__ == "__main__":
    main()
