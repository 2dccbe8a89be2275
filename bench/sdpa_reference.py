#!/usr/bin/env python3
"""Decode attention through torch's scaled_dot_product_attention, the baselines of
bench_sals_attention: the flash backend (FlashAttention-2) and the cuDNN backend.

One new query token per sequence, 32 query heads x 128, fp16, K/V of `context` tokens with 32
(MHA) or 8 (GQA, enable_gqa) KV heads, batch {1, 8, 16, 32, 64} x context {4K, 32K, 128K} up to
2M cached tokens (as bench_sals_attention; --attn, --batches and --contexts narrow it). Each call is
captured in a CUDA graph (as the C++ side times its steps) that cycles over enough copies of K/V
to exceed the L2; the time is the median over replays between CUDA events, per call, after a
warm-up, on random inputs. A backend that refuses a shape is recorded as null.

Usage: python3 bench/sdpa_reference.py --json sdpa.json [--attn GQA] [--batches 16] [--contexts 4096]
"""

import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEAD_DIM = 128
NUM_HEADS = 32
WARMUP = 5
RUNS = 30
ROTATION_BYTES = 256 << 20  # per graph replay, several times the 50 MB L2
MAX_COPIES = 8
MAX_TOKENS = 64 * 32768


def time_backend(backend, q, kvs):
    """Median microseconds per SDPA call, or None when the backend refuses the shape."""
    gqa = q.shape[1] != kvs[0][0].shape[1]

    def calls():
        for k, v in kvs:
            F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)

    try:
        with sdpa_kernel([backend]):
            calls()  # warm-up outside capture: kernel selection, workspace allocation
            torch.cuda.synchronize()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream):
                with torch.cuda.graph(graph, stream=stream):
                    calls()
            torch.cuda.current_stream().wait_stream(stream)
    except RuntimeError as e:
        print(f"  {backend.name}: refused ({str(e).splitlines()[0][:100]})", file=sys.stderr)
        return None
    for _ in range(WARMUP):
        graph.replay()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(RUNS + 1)]
    events[0].record()
    for i in range(RUNS):
        graph.replay()
        events[i + 1].record()
    torch.cuda.synchronize()
    per_call = [events[i].elapsed_time(events[i + 1]) * 1e3 / len(kvs) for i in range(RUNS)]
    return statistics.median(per_call)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--attn", choices=("MHA", "GQA"))
    parser.add_argument("--batches", default="1,8,16,32,64")
    parser.add_argument("--contexts", default="4096,32768,131072")
    args = parser.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    torch.manual_seed(0)
    dev = torch.device("cuda")
    results = []
    for attn, kv_heads in (("MHA", 32), ("GQA", 8)):
        if args.attn and args.attn != attn:
            continue
        for context in contexts:
            for batch in batches:
                if batch * context > MAX_TOKENS:
                    continue
                kv_bytes = 2 * batch * kv_heads * context * HEAD_DIM * 2
                copies = max(1, min(MAX_COPIES, math.ceil(ROTATION_BYTES / kv_bytes)))
                q = torch.empty(batch, NUM_HEADS, 1, HEAD_DIM, device=dev, dtype=torch.float16)
                q.uniform_(-2, 2)
                kvs = []
                for _ in range(copies):
                    k = torch.empty(batch, kv_heads, context, HEAD_DIM, device=dev,
                                    dtype=torch.float16).uniform_(-1, 1)
                    v = torch.empty_like(k).uniform_(-1, 1)
                    kvs.append((k, v))
                row = {"attn": attn, "kv_heads": kv_heads, "batch": batch, "context": context,
                       "flash_us": time_backend(SDPBackend.FLASH_ATTENTION, q, kvs),
                       "cudnn_us": time_backend(SDPBackend.CUDNN_ATTENTION, q, kvs)}
                results.append(row)
                print(f"{attn} batch {batch} context {context}: flash {row['flash_us']} us, "
                      f"cudnn {row['cudnn_us']} us", file=sys.stderr, flush=True)
                del kvs, q
                torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "runs": RUNS, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
