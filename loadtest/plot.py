#!/usr/bin/env python3
"""Charts sals-loadtest results: one or more --json files in, PNG files out.

  latency_vs_rate.png          TTFT, TPOT, ITL and E2E percentiles against the offered request
                               rate (runs made with --request_rate), one line per percentile and
                               result series
  throughput_vs_concurrency.png  output-token and request throughput, and TTFT / TPOT medians,
                               against the number of requests in flight (runs made with
                               --concurrency)

A result series is one input file's --label, else its model, backend and KV format, so files
from several servers or configs compare on the same axes.

  python3 loadtest/plot.py results/*.json --out plots/
"""
import argparse
import json
import math
import sys
from pathlib import Path

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot.py needs matplotlib: apt-get install python3-matplotlib "
             "(or pip install matplotlib)")

METRICS = (("ttft", "time to first token"), ("tpot", "time per output token"),
           ("itl", "inter-token latency"), ("e2e", "end-to-end latency"))


def load(paths):
    """series name -> list of runs (dicts from the JSON), in file order."""
    series = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        if result.get("tool") != "sals-loadtest":
            sys.exit(f"{path}: not a sals-loadtest result")
        name = result.get("label") or (f"{result.get('model')} ({result.get('backend')}, "
                                       f"KV {result.get('kv_cache_format')})")
        for run in result["runs"]:
            run["_percentiles"] = [f"p{p:g}" for p in result["percentiles"]]
            series.setdefault(name, []).append(run)
    return series


def rate_of(run):
    rate = run.get("request_rate")
    return None if rate in (None, "inf") or math.isinf(float(rate)) else float(rate)


def plot_latency_vs_rate(series, out):
    by_rate = {name: sorted((r for r in runs if r["mode"] == "rate" and rate_of(r)),
                            key=rate_of) for name, runs in series.items()}
    by_rate = {name: runs for name, runs in by_rate.items() if runs}
    if not by_rate:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    styles = ["-", "--", ":", "-."]
    for ax, (metric, title) in zip(axes.flat, METRICS):
        for color, (name, runs) in enumerate(by_rate.items()):
            rates = [rate_of(r) for r in runs]
            for style, key in zip(styles, runs[0]["_percentiles"]):
                values = [r["latency_ms"][metric].get(key, float("nan")) for r in runs]
                ax.plot(rates, values, style, marker="o", markersize=3,
                        color=f"C{color}", label=f"{key} {name}" if len(by_rate) > 1 else key)
        ax.set_title(title)
        ax.set_xlabel("offered request rate (req/s)")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("sals-loadtest: latency percentiles against request rate")
    path = out / "latency_vs_rate.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_throughput_vs_concurrency(series, out):
    by_concurrency = {name: sorted((r for r in runs if r["mode"] == "concurrency"),
                                   key=lambda r: r["concurrency"])
                      for name, runs in series.items()}
    by_concurrency = {name: runs for name, runs in by_concurrency.items() if runs}
    if not by_concurrency:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    ticks = sorted({r["concurrency"] for runs in by_concurrency.values() for r in runs})
    for color, (name, runs) in enumerate(by_concurrency.items()):
        n = [r["concurrency"] for r in runs]
        style = dict(marker="o", markersize=3, color=f"C{color}")
        axes[0].plot(n, [r["throughput"]["output_tokens_per_s"] for r in runs], label=name,
                     **style)
        axes[1].plot(n, [r["throughput"]["requests_per_s"] for r in runs], label=name, **style)
        axes[2].plot(n, [r["latency_ms"]["ttft"].get("p50", float("nan")) for r in runs],
                     label=f"TTFT p50 {name}", **style)
        axes[2].plot(n, [r["latency_ms"]["tpot"].get("p50", float("nan")) for r in runs], "--",
                     label=f"TPOT p50 {name}", **style)
    for ax, (title, ylabel) in zip(axes, (("output-token throughput", "tokens/s"),
                                          ("request throughput", "requests/s"),
                                          ("latency medians", "ms"))):
        ax.set_title(title)
        ax.set_xlabel("requests in flight (concurrency)")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("sals-loadtest: throughput against concurrency")
    path = out / "throughput_vs_concurrency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="sals-loadtest --json files")
    parser.add_argument("--out", default=".", help="folder for the PNG files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    series = load(args.results)
    written = [p for p in (plot_latency_vs_rate(series, out),
                           plot_throughput_vs_concurrency(series, out)) if p]
    if not written:
        sys.exit("nothing to plot: no run with a finite --request_rate or a --concurrency")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
