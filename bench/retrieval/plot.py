#!/usr/bin/env python3
"""Plots sals-retrieval's JSON: accuracy against prompt length per configuration, one panel per
task, plus a panel of the SALS configurations' attention-mass recall (averaged over tasks).

  python3 bench/retrieval/plot.py out/retrieval/retrieval.json --out out/retrieval/retrieval.png
"""

import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", help="sals-retrieval --json output")
    ap.add_argument("--out", help="PNG to write (default: the JSON's name with .png)")
    ap.add_argument("--title", help="figure title (default: model and backend)")
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot.py needs matplotlib: pip install matplotlib (or apt-get install "
                 "python3-matplotlib)")

    with open(args.json, encoding="utf-8") as f:
        report = json.load(f)
    results = report["results"]
    if not results:
        sys.exit(f"plot.py: {args.json} has no results")
    tasks = list(dict.fromkeys(r["task"] for r in results))
    configs = [c["name"] for c in report["configs"] if c["status"] == "ok"]
    lengths = sorted({r["length"] for r in results})

    def row(task, config, length):
        for r in results:
            if r["task"] == task and r["config"] == config and r["length"] == length:
                return r
        return None

    has_recall = any(r["recall"] for r in results)
    panels = len(tasks) + (1 if has_recall else 0)
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    styles = {}
    for i, config in enumerate(configs):
        dense = config == "dense"
        # Dense as open squares on top, so SALS points that match it stay visible beneath.
        styles[config] = dict(marker="s" if dense else "o", color="black" if dense else f"C{i}",
                              markerfacecolor="none" if dense else None,
                              markersize=8 if dense else 5, zorder=3 if dense else 2,
                              linestyle="-" if dense or ":" not in config else "--",
                              linewidth=1.8 if dense else 1.4)

    for k, task in enumerate(tasks):
        ax = axes[k // cols][k % cols]
        for config in configs:
            points = [(L, row(task, config, L)) for L in lengths]
            points = [(L, r["accuracy"]) for L, r in points if r]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], label=config,
                        **styles[config])
        n = max((r["cases"] for r in results if r["task"] == task), default=0)
        ax.set_title(f"{task} ({n} cases per length)")
        ax.set_ylabel("accuracy (exact match)")
        ax.set_ylim(-0.03, 1.03)

    if has_recall:
        k = len(tasks)
        ax = axes[k // cols][k % cols]
        baseline_drawn = False
        for config in configs:
            xs, ys, rand = [], [], []
            for L in lengths:
                rs = [r["recall"] for r in results
                      if r["config"] == config and r["length"] == L and r["recall"]]
                samples = sum(x["samples"] for x in rs)
                if samples:
                    xs.append(L)
                    ys.append(sum(x["mean"] * x["samples"] for x in rs) / samples)
                    rand.append(sum(x["random"] * x["samples"] for x in rs) / samples)
            if xs:
                ax.plot(xs, ys, label=config, **styles[config])
                if not baseline_drawn:  # what a random pick of as many tokens keeps
                    ax.plot(xs, rand, color="grey", linestyle=":", marker=".",
                            label=f"random pick ({config})")
                    baseline_drawn = True
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title("top-k recall of attention mass")
        ax.set_ylabel("mass on selected tokens")
        ax.set_ylim(0, 1.03)

    for k in range(panels, rows * cols):
        axes[k // cols][k % cols].axis("off")
    for k in range(panels):
        ax = axes[k // cols][k % cols]
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths)
        ax.set_xticklabels([f"{L // 1024}K" if L % 1024 == 0 else str(L) for L in lengths])
        ax.set_xlabel("prompt length (tokens)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle(args.title or f"{report['model']} ({report['backend']})")
    fig.tight_layout()
    out = args.out or (args.json[:-5] if args.json.endswith(".json") else args.json) + ".png"
    fig.savefig(out, dpi=120)
    print(f"plot.py: wrote {out}")


if __name__ == "__main__":
    main()
