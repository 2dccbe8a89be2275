#!/usr/bin/env python3
"""gpt-fast's decode method, measured in the same device session as bench_e2e_decode.

A plain PyTorch Llama written the way gpt-fast writes it (github.com/pytorch-labs/gpt-fast,
model.py and generate.py): static KV caches of [batch, kv_heads, max_len, head_dim] per layer,
a boolean causal-mask table, GQA by repeat_interleave of the cached K/V, attention through
scaled_dot_product_attention with that mask, RoPE from a precomputed table, bf16 weights, the
one-token decode step compiled with torch.compile(mode="reduce-overhead", fullgraph=True) and run
under the math SDPA backend, which gpt-fast's decode loop selects so that Inductor generates the
attention itself, with Inductor's coordinate-descent tuning on (gpt-fast's setting;
--no_coordinate_descent skips it to save compile time).
Weights are random (Llama-3.1-8B shape); the caches are full: every step decodes at position
context - 1 over `context` cached tokens (max_len = context, as gpt-fast sizes its caches), so
each step does the work of a step at that context. Tokens/s = batch / median step time (CUDA
events around each compiled step after the warm-up; the step's output is cloned before the next
call, as gpt-fast's generate loop does with the token it keeps).

Usage: python3 bench/gpt_fast_baseline.py --json gpt_fast.json [--gpu NAME]
         [--shapes 8x4096,8x32768,4x65536] [--steps 20] [--no_coordinate_descent]
Writes {"results": [{"kind": "e2e", "gpu", "kv": "gpt-fast", "batch", "context", "tok_s"}]}.
"""

import argparse
import json
import statistics
import sys

import torch
import torch._inductor.config
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# Llama-3.1-8B.
DIM = 4096
LAYERS = 32
HEADS = 32
KV_HEADS = 8
HEAD_DIM = 128
INTERMEDIATE = 14336
VOCAB = 128256
ROPE_BASE = 500000.0
EPS = 1e-5
WARMUP = 3


class KVCache(nn.Module):
    def __init__(self, batch, max_len, dtype):
        super().__init__()
        shape = (batch, KV_HEADS, max_len, HEAD_DIM)
        self.register_buffer("k_cache", torch.empty(shape, dtype=dtype).uniform_(-1, 1))
        self.register_buffer("v_cache", torch.empty(shape, dtype=dtype).uniform_(-1, 1))

    def update(self, input_pos, k_val, v_val):
        k_out = self.k_cache
        v_out = self.v_cache
        k_out[:, :, input_pos] = k_val
        v_out[:, :, input_pos] = v_val
        return k_out, v_out


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + EPS)
        return y.type_as(x) * self.weight


def apply_rotary_emb(x, freqs_cis):
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    freqs_cis = freqs_cis.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack(
        [xs[..., 0] * freqs_cis[..., 0] - xs[..., 1] * freqs_cis[..., 1],
         xs[..., 1] * freqs_cis[..., 0] + xs[..., 0] * freqs_cis[..., 1]], -1)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.wqkv = nn.Linear(DIM, (HEADS + 2 * KV_HEADS) * HEAD_DIM, bias=False)
        self.wo = nn.Linear(HEADS * HEAD_DIM, DIM, bias=False)
        self.kv_cache = None

    def forward(self, x, freqs_cis, mask, input_pos):
        bsz, seqlen, _ = x.shape
        q, k, v = self.wqkv(x).split(
            [HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        q = apply_rotary_emb(q.view(bsz, seqlen, HEADS, HEAD_DIM), freqs_cis)
        k = apply_rotary_emb(k.view(bsz, seqlen, KV_HEADS, HEAD_DIM), freqs_cis)
        v = v.view(bsz, seqlen, KV_HEADS, HEAD_DIM)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k, v = self.kv_cache.update(input_pos, k, v)
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
        return self.wo(y.transpose(1, 2).contiguous().view(bsz, seqlen, HEADS * HEAD_DIM))


class FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Linear(DIM, INTERMEDIATE, bias=False)
        self.w3 = nn.Linear(DIM, INTERMEDIATE, bias=False)
        self.w2 = nn.Linear(INTERMEDIATE, DIM, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = Attention()
        self.feed_forward = FeedForward()
        self.attention_norm = RMSNorm(DIM)
        self.ffn_norm = RMSNorm(DIM)

    def forward(self, x, freqs_cis, mask, input_pos):
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = RMSNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def setup_caches(self, batch, max_len, dtype):
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch, max_len, dtype)
        freqs = 1.0 / (ROPE_BASE ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
        angles = torch.outer(torch.arange(max_len).float(), freqs)
        self.freqs_cis = torch.stack([torch.cos(angles), torch.sin(angles)], -1).to(dtype)
        self.causal_mask = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))

    def forward(self, idx, input_pos):
        mask = self.causal_mask[None, None, input_pos]
        freqs_cis = self.freqs_cis[input_pos]
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, freqs_cis, mask, input_pos)
        return self.output(self.norm(x))


def decode_one_token(model, x, input_pos):
    logits = model(x, input_pos)
    return torch.argmax(logits[:, -1], dim=-1, keepdim=True)


def measure(batch, context, steps, dev):
    torch.manual_seed(0)
    with torch.device(dev):
        model = Transformer().to(torch.bfloat16)
        for p in model.parameters():
            p.data.normal_(0.0, 0.02)
        model.setup_caches(batch, context, torch.bfloat16)
    model.eval()
    step = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)
    token = torch.randint(0, VOCAB, (batch, 1), device=dev)
    input_pos = torch.tensor([context - 1], device=dev, dtype=torch.int64)
    times = []
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for i in range(WARMUP + steps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            token = step(model, token, input_pos).clone()
            end.record()
            torch.cuda.synchronize()
            if i >= WARMUP:
                times.append(start.elapsed_time(end) / 1e3)
    del model, step
    torch.cuda.empty_cache()
    return batch / statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--gpu", default=None)
    parser.add_argument("--shapes", default="8x4096,8x32768,4x65536")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no_coordinate_descent", action="store_true")
    args = parser.parse_args()
    torch._inductor.config.coordinate_descent_tuning = not args.no_coordinate_descent
    dev = torch.device("cuda")
    gpu = args.gpu or torch.cuda.get_device_name()
    results = []
    for shape in args.shapes.split(","):
        batch, context = (int(x) for x in shape.split("x"))
        tok_s = measure(batch, context, args.steps, dev)
        print(f"gpt-fast method batch {batch} context {context}: {tok_s:.1f} tokens/s",
              file=sys.stderr, flush=True)
        results.append({"kind": "e2e", "gpu": gpu, "kv": "gpt-fast", "batch": batch,
                        "context": context, "tok_s": tok_s})
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
