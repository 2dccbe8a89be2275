#!/usr/bin/env python3
"""Causal prefill attention through torch's scaled_dot_product_attention, the baselines of
bench_prefill_attention: the flash backend (FlashAttention-2) and the cuDNN backend.

One sequence, 32 query heads x 128, fp16, K/V with 32 (MHA) or 8 (GQA) KV heads, prompt lengths
4K, 16K, 32K and 128K (as bench_prefill_attention; --contexts, --chunks and --kv_heads narrow it).
Each prompt is timed whole (is_causal) and cut into 2K and 8K chunks against the cached prefix:
the last chunk alone and all chunks back to back. A chunk of q tokens after p cached ones attends
causally aligned to the bottom right (query i sees keys 0..p+i); SDPA's is_causal aligns top-left,
which is wrong there. So the flash rows call FlashAttention-2 through
torch.ops.aten._scaled_dot_product_flash_attention, whose causal flag means bottom-right for
q < k (what torch.nn.attention.bias.causal_lower_right dispatches to; the bias object itself
would bypass sdpa_kernel's backend choice), and the cuDNN rows pass an explicit boolean mask of
q x (p + q) under sdpa_kernel([CUDNN_ATTENTION]). Times are medians between CUDA events after a
warm-up, on random inputs drawn per shape. A backend that refuses a shape is recorded as null,
with the reason on stderr.

TFLOP/s count the causal work exactly, as the C++ side does:
4 * head_dim * num_heads * (q * p + q * (q + 1) / 2) per chunk.

Usage: python3 bench/sdpa_prefill_reference.py --json sdpa_prefill.json [--contexts 4096,32768]
  [--chunks 2048,8192] [--kv_heads 8,32]
"""

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEAD_DIM = 128
NUM_HEADS = 32


def causal_flops(prefix, q):
    return 4.0 * HEAD_DIM * NUM_HEADS * (q * prefix + q * (q + 1) / 2.0)


def chunk_ends(context, chunk):
    ends = []
    end = min(chunk, context)
    while True:
        ends.append(end)
        if end == context:
            return ends
        end = min(end + chunk, context)


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(runs + 1)]
    events[0].record()
    for i in range(runs):
        fn()
        events[i + 1].record()
    torch.cuda.synchronize()
    return statistics.median(events[i].elapsed_time(events[i + 1]) for i in range(runs))


def chunk_call(backend, q, k, v, prefix, q_len):
    """One chunk: q rows [prefix, prefix + q_len) against keys [0, prefix + q_len)."""
    gqa = q.shape[1] != k.shape[1]
    qs = q[:, :, prefix:prefix + q_len]
    ks = k[:, :, :prefix + q_len]
    vs = v[:, :, :prefix + q_len]
    if prefix == 0:
        return lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
    if backend == SDPBackend.FLASH_ATTENTION:
        # FlashAttention-2 takes GQA K/V as they are; causal is bottom-right for q < k.
        return lambda: torch.ops.aten._scaled_dot_product_flash_attention(
            qs, ks, vs, 0.0, is_causal=True, return_debug_mask=False)
    rows = torch.arange(q_len, device=q.device).unsqueeze(1) + prefix
    mask = torch.arange(prefix + q_len, device=q.device).unsqueeze(0) <= rows
    return lambda: F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=gqa)


def time_backend(backend, q, k, v, spans, warmup, runs):
    """Median ms of running every chunk in `spans` back to back, or None when refused."""
    try:
        calls = [chunk_call(backend, q, k, v, p, e - p) for p, e in spans]

        def run_all():
            for c in calls:
                c()

        with sdpa_kernel([backend]):
            run_all()  # kernel selection, workspace allocation; raises when refused
            torch.cuda.synchronize()
            return median_ms(run_all, warmup, runs)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        print(f"  {backend.name}: refused ({reason})", file=sys.stderr)
        torch.cuda.empty_cache()
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--contexts", default="4096,16384,32768,131072")
    parser.add_argument("--chunks", default="2048,8192")
    parser.add_argument("--kv_heads", default="8,32")
    args = parser.parse_args()
    contexts = [int(x) for x in args.contexts.split(",")]
    chunks = [int(x) for x in args.chunks.split(",")]
    kv_heads_list = [int(x) for x in args.kv_heads.split(",")]
    torch.manual_seed(0)
    dev = torch.device("cuda")
    results = []
    table = []
    for kv_heads in kv_heads_list:
        for context in contexts:
            q = torch.empty(1, NUM_HEADS, context, HEAD_DIM, device=dev, dtype=torch.float16)
            q.uniform_(-2, 2)
            k = torch.empty(1, kv_heads, context, HEAD_DIM, device=dev,
                            dtype=torch.float16).uniform_(-1, 1)
            v = torch.empty_like(k).uniform_(-1, 1)
            whole_flops = causal_flops(0, context)
            runs = 5 if whole_flops > 2e13 else 11 if whole_flops > 2e12 else 21
            shapes = [(context, "whole")]
            shapes += [(c, part) for c in chunks if c < context
                       for part in ("last_chunk", "all_chunks")]
            for chunk, part in shapes:
                ends = chunk_ends(context, chunk)
                spans = [(ends[i - 1] if i > 0 else 0, ends[i]) for i in range(len(ends))]
                if part == "last_chunk":
                    spans = spans[-1:]
                flops = sum(causal_flops(p, e - p) for p, e in spans)

                warmup = 1 if part == "all_chunks" else 2
                row = {"kv_heads": kv_heads, "context": context, "chunk": chunk, "part": part,
                       "flops": flops}
                for name, backend in (("flash", SDPBackend.FLASH_ATTENTION),
                                      ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                    ms = time_backend(backend, q, k, v, spans, warmup,
                                      max(runs, 11) if part == "last_chunk" else runs)
                    row[f"{name}_ms"] = ms
                    row[f"{name}_tflops"] = flops / (ms * 1e-3) / 1e12 if ms else None
                results.append(row)
                table.append(row)
                print(f"kv_heads {kv_heads} context {context} chunk {chunk} {part}: "
                      f"flash {row['flash_ms']} ms, cudnn {row['cudnn_ms']} ms",
                      file=sys.stderr, flush=True)
            del q, k, v
            torch.cuda.empty_cache()

    def fmt(x):
        return "-" if x is None else f"{x:.0f}"

    print("\nCausal prefill attention through torch SDPA, one sequence, 32 query heads x 128, "
          "fp16; TFLOP/s (causal FLOPs)")
    print(f"{'kv_heads':>8} {'context':>7} {'chunk':>6} {'part':<10} {'FA2':>7} {'cuDNN':>7}")
    for r in table:
        print(f"{r['kv_heads']:>8} {r['context']:>7} {r['chunk']:>6} {r['part']:<10} "
              f"{fmt(r['flash_tflops']):>7} {fmt(r['cudnn_tflops']):>7}")
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "cudnn": torch.backends.cudnn.version(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
