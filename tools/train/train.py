#!/usr/bin/env python3
"""Trains the demo model (models/sals-tiny-retrieval): a small Llama with RoPE and GQA, on natural
text mixed with synthetic long-context retrieval tasks (tasks.py), inside a fixed time budget.

Inputs (--data, written by make_corpus.py + prepare.py): corpus.txt, corpus_ids.bin,
tokenizer.model. Output (--out): a Hugging Face Llama directory our loader reads (config.json,
model.safetensors in bf16 with tied embeddings, tokenizer.model, tokenizer_config.json,
generation_config.json) and train_log.json (settings, loss curve, phases, dense accuracy per task
and length on held-out seeds, timings).

  # the 32K run on one H100 or H200 (about 8.2 minutes of wall time in all; tools/train/README.md)
  python3 tools/train/train.py --data build-train/train-data --out OUT --time-budget 450 \\
      --max-len 32768 --rope-theta 1000000
  # CPU smoke test (one to two minutes), every path of the recipe at toy size
  python3 tools/train/train.py --data build-train/train-data --out /tmp/tiny --device cpu --tiny \\
      --max-len 2048 --rope-theta 1e6 --form-ans-loss 100 --form-window 10 --debug-oom-above 1024

Training rows have fixed lengths (T = --min-len ... --max-len, powers of two; a batch holds about
--batch-tokens tokens, --long-batch-tokens from --long-from on). A row is a task case in the
evaluation format (T/2..7T/8 tokens, then natural text up to T), a multikey drill (every key asked
and answered), a variable-tracking drill (every chain asked and answered), a repeat (random
tokens, text, the same tokens again: the plainest exercise for copying heads) or natural text.
Loss: mean cross entropy over all tokens plus --answer-weight times the mean over answer tokens
(the answers are a few tokens among thousands; this keeps retrieval from drowning in the
language-model loss).

Two phases:
  1. forming the copying circuit: rows of the two, then three, shortest lengths, drills and
     repeats weighted up, the learning rate warmed up and then held at its peak; it ends
     --form-margin steps after the answer loss (mean of the last --form-window steps) falls below
     --form-ans-loss (the phase change of run 3), or at --form-max-steps / --form-max-frac of the
     budget;
  2. the long rows: every length but the shortest, the longer ones unlocked one by one, each
     length's share of the time fixed (phase2_shares), the learning rate on a cosine to its
     minimum. Its number of steps is planned when phase 1 ends, from a timed probe of each length
     (scaled by phase 1's measured step times), so that it ends inside --time-budget; a hard stop
     at the budget saves whatever was reached.
"""

import argparse
import gc
import json
import math
import multiprocessing
import os
import random
import re
import sys
import time

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402

BOS, EOS = 1, 2

# Held-out prompts are this much shorter than the length they are reported under, so that prompt
# + answer (at most 31 tokens with this tokenizer: multivalue) + EOS fit the positions trained.
EVAL_ANSWER_ROOM = 48


# ------------------------------------------------------------------------------------------------
# Model: Llama exactly as transformers' LlamaForCausalLM (and our engine/model loader) computes it
# ------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(cfg, length, device):
    """cos, sin [length, head_dim]: HF's rotate-half layout (each frequency twice, halves)."""
    hd = cfg["head_dim"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], dim=-1).to(device)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, hd = cfg["hidden_size"], cfg["head_dim"]
        self.nq, self.nkv, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        self.q_proj = nn.Linear(h, self.nq * hd, bias=False)
        self.k_proj = nn.Linear(h, self.nkv * hd, bias=False)
        self.v_proj = nn.Linear(h, self.nkv * hd, bias=False)
        self.o_proj = nn.Linear(self.nq * hd, h, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.nq, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        cos, sin = cos[:t].to(q.dtype), sin[:t].to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA as HF's repeat_kv: KV head j serves query heads j*g .. j*g+g-1.
        g = self.nq // self.nkv
        k = k[:, :, None].expand(b, self.nkv, g, t, self.hd).reshape(b, self.nq, t, self.hd)
        v = v[:, :, None].expand(b, self.nkv, g, t, self.hd).reshape(b, self.nq, t, self.hd)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.nq * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, i = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.rope = None
        self.checkpoint_from = 0  # rows of at least this many tokens: activation checkpointing

    def checkpointed(self, t):
        return bool(self.checkpoint_from) and t >= self.checkpoint_from

    def init_weights(self, seed):
        gen = torch.Generator().manual_seed(seed)
        std = 0.02
        out_std = std / math.sqrt(2 * self.cfg["num_hidden_layers"])  # residual branch outputs
        for name, p in self.named_parameters():
            if p.dim() == 1:
                continue
            s = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * s)

    def hidden(self, ids):
        if self.rope is None or self.rope[0].shape[0] < ids.shape[1]:
            self.rope = rope_tables(self.cfg, max(ids.shape[1], 512), ids.device)
        cos, sin = self.rope
        x = self.embed_tokens(ids)
        # Checkpointing keeps only each layer's input for backward and recomputes the rest there
        # (about a third more compute); off unless asked for or needed (probe_step_times).
        recompute = self.training and torch.is_grad_enabled() and self.checkpointed(ids.shape[1])
        for layer in self.layers:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return self.norm(x)

    def logits(self, h):
        return h @ self.embed_tokens.weight.to(h.dtype).t()  # tied embeddings


def model_config(args, vocab_size):
    if args.dims:
        keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim")
        dims = dict(zip(keys, (int(v) for v in args.dims.split(","))))
    elif args.tiny:
        dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    else:
        dims = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=64)
    return dict(vocab_size=vocab_size, rms_norm_eps=1e-5, rope_theta=float(args.rope_theta),
                max_position_embeddings=args.max_len, **dims)


# ------------------------------------------------------------------------------------------------
# Curriculum: which row lengths a step draws, in each phase
# ------------------------------------------------------------------------------------------------

FORM_UNLOCK_STEP = 700  # phase 1: the two shortest lengths, then the third too (run 3: step 682)
KIND_RAMP_STEPS = 2700  # phase 1's row kinds move from drills/repeats to tasks over this many steps

# Phase 2, by rank from the longest length down: (share of the time, unlocked at progress q).
# The rest (all but the shortest length) share PHASE2_REST; the shortest of those is always open.
PHASE2_TOP = ((0.35, 0.25), (0.20, 0.15), (0.15, 0.05), (0.10, 0.0))
PHASE2_REST = 0.20


def buckets_for(min_len, max_len):
    out, t = [], min_len
    while t <= max_len:
        out.append(t)
        t *= 2
    return out


def rows_for(args, t):
    """Rows of length t in one step: --batch-tokens of them, --long-batch-tokens from --long-from
    on (fewer tokens a step at the longest rows: more optimizer steps in their short time)."""
    tokens = args.batch_tokens
    if args.long_batch_tokens and t >= args.long_from:
        tokens = args.long_batch_tokens
    return max(1, tokens // t)


def phase1_buckets(step, buckets):
    """Copying is learned on short rows, where the needle is a large part of the context."""
    return buckets[: 2 if step < FORM_UNLOCK_STEP else 3]


def phase2_shares(q, buckets):
    """{length: share of phase 2's time} at its progress q in [0, 1] (shares sum to 1)."""
    cands = buckets[1:] if len(buckets) > 1 else list(buckets)
    ranked = cands[::-1]
    n_rest = max(0, len(ranked) - len(PHASE2_TOP))
    shares = {}
    for i, t in enumerate(ranked):
        share, unlock = PHASE2_TOP[i] if i < len(PHASE2_TOP) else (PHASE2_REST / n_rest, 0.0)
        if q >= unlock or t == cands[0]:
            shares[t] = share
    total = sum(shares.values())
    return {t: s / total for t, s in sorted(shares.items())}


def phase2_mix(q, buckets, seconds):
    """(lengths, step weights, expected seconds a step): a length is drawn with probability
    share / seconds-per-step, so that the time spent on it follows its share."""
    shares = phase2_shares(q, buckets)
    allowed = list(shares)
    weights = [shares[t] / seconds[t] for t in allowed]
    return allowed, weights, 1.0 / sum(weights)


# ------------------------------------------------------------------------------------------------
# Data: each DataLoader worker builds whole batches; batch s comes from worker s % workers
# ------------------------------------------------------------------------------------------------


class Batches(torch.utils.data.IterableDataset):
    """ctrl (int64, shared memory, written by the training loop): [first step of phase 2, steps
    planned for phase 2 (0 until known), stop]. A worker builds step s only a few dozen steps
    before the loop takes it (prefetch), and the loop decides the switch --form-margin steps
    ahead, so every step's data depends only on the logged switch, plan and probe times."""

    def __init__(self, args, ctrl):
        super().__init__()
        self.args, self.ctrl = args, ctrl
        self.state = None

    def _setup(self):
        if self.state is None:
            a = self.args
            sp = spm.SentencePieceProcessor(model_file=os.path.join(a.data, "tokenizer.model"))
            ids = np.fromfile(os.path.join(a.data, "corpus_ids.bin"), dtype=np.uint16)
            hay = tasks.load_haystack(os.path.join(a.data, "corpus.txt"))
            self.state = (sp, ids, hay)
        return self.state

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        step = wid
        while True:
            batch = make_batch(self.args, self._setup(), step, self.ctrl)
            if batch is None:
                return
            yield batch
            step += nw


def encode_case(sp, case):
    """Prompt ids (with BOS) and answer ids, split as the server sees them: the answer is what
    follows the prompt's own encoding (encoding the question line alone gives the same split)."""
    p = [BOS] + sp.encode(case["prompt"])
    q = case["prompt"][case["prompt"].rfind("\n") + 1 :]
    a = sp.encode(q + case["answer"])[len(sp.encode(q)) :]
    return p, a


def cont(sp, text):
    """Ids of `text` (starting with a space, punctuation or a line break) as it encodes after a
    word: pieces never span a space, so encoding "a" + text and dropping "▁a" gives them."""
    ids = sp.encode("a" + text)
    return ids[1:] if ids and ids[0] == sp.piece_to_id("\u2581a") else None


def drill_length(rng, t):
    """Prompt tokens of a drill in a row of t: short rows keep run 3's t/4..t/2 (room for the
    questions); from 2048 on the needles spread over t/2..3t/4, long distances included."""
    return rng.randint(t // 4, t // 2) if t <= 1024 else rng.randint(t // 2, 3 * t // 4)


def append_questions(sp, ids, spans, t, qas):
    """Appends (question, answer) texts, each answer a dense target, while they fit in t + 1."""
    for question, answer in qas:
        q, a = cont(sp, question), cont(sp, answer)
        if q is None or a is None or len(ids) + len(q) + len(a) + 1 > t + 1:
            break
        ids += q
        spans.append((len(ids), len(ids) + len(a)))
        ids += a
    return ids + [EOS], spans


NEEDLE = re.compile(r"The special magic number for (\S+) is (\d+)\.")


def drill_row(sp, hay, rng, t):
    """A multikey case whose question is followed by questions about every other key, each
    answered: dense in-context retrieval targets (training only). Returns (ids, answer_spans)."""
    num_keys = rng.randint(2, 8) if t < 4096 else rng.randint(4, 16)
    length = drill_length(rng, t)
    prompt, answer, _ = tasks.multikey(rng, hay, length, None, num_keys=num_keys)
    p, a = encode_case(sp, {"prompt": prompt, "answer": answer})
    ids, spans = p + a, [(len(p), len(p) + len(a))]
    pairs = NEEDLE.findall(prompt)
    asked = prompt.rsplit("for ", 1)[1].rsplit(" is", 1)[0]
    rest = [kv for kv in pairs if kv[0] != asked]
    rng.shuffle(rest)
    qas = [((". " if i == 0 else " ") + f"What is the special magic number for {key}? "
            f"The special magic number for {key} is", f" {value}.")
           for i, (key, value) in enumerate(rest)]
    return append_questions(sp, ids, spans, t, qas)


VAR_VALUE = re.compile(r"VAR ([A-Z]{5}) = (\d+)\.")
VAR_LINK = re.compile(r"VAR ([A-Z]{5}) = VAR ([A-Z]{5})\.")


def vartrack_chains(prompt):
    """[(value, [variables in assignment order])] of a vartrack prompt, from its needles."""
    follows = {src: dst for dst, src in VAR_LINK.findall(prompt)}  # "VAR dst = VAR src."
    chains = []
    for var, value in VAR_VALUE.findall(prompt):
        chain = [var]
        while chain[-1] in follows and len(chain) <= len(follows):
            chain.append(follows[chain[-1]])
        chains.append((value, chain))
    return chains


def vartrack_drill_row(sp, hay, rng, t):
    """A variable-tracking case (2..4 chains of 2..5 variables) whose question about the first
    chain is followed by the same question about every other chain, each answered in the
    evaluation format: every chain is followed, hop by hop, with dense targets (training only)."""
    # A statement is about 12 tokens: at most t/24 variables keep them in about half a short row.
    max_vars = max(4, t // 24)
    chains = rng.randint(2, min(4, max_vars // 2))
    hops = rng.randint(1, max(1, min(4, max_vars // chains - 1)))
    length = drill_length(rng, t)
    prompt, answer, _ = tasks.vartrack(rng, hay, length, None, hops=hops, chains=chains)
    p, a = encode_case(sp, {"prompt": prompt, "answer": answer})
    ids, spans = p + a, [(len(p), len(p) + len(a))]
    asked = prompt.rsplit("assigned the value ", 1)[1].split(" ", 1)[0]
    rest = [c for c in vartrack_chains(prompt) if c[0] != asked]
    rng.shuffle(rest)
    qas = [(f"\n\nQuestion: Which variables are assigned the value {value}? "
            f"Answer: The variables assigned the value {value} are", " " + ", ".join(chain))
           for value, chain in rest]
    return append_questions(sp, ids, spans, t, qas)


def repeat_row(rng, corpus, t, vocab):
    """Random tokens, some natural text, the same random tokens again: the second copy can only
    be predicted by copying, the plainest exercise for induction heads (training only)."""
    n = rng.randint(8, max(8, min(256, t // 4)))
    seq = [rng.randrange(259, vocab) for _ in range(n)]
    gap = rng.randint(0, max(0, t - 2 * n - 2))
    start = rng.randrange(0, len(corpus) - gap - 1)
    ids = [BOS] + seq + corpus[start : start + gap].tolist()
    spans = [(len(ids) + 1, len(ids) + n)]  # the first token of the copy is not predictable
    return ids + seq, spans


KINDS = ("task", "drill", "vtdrill", "repeat", "text")


def kind_weights(late):
    """Row kinds: drills and repeats matter most early (forming copying heads), tasks later;
    variable-tracking drills weigh as much as the multikey drills."""
    return (0.2 + 0.45 * late, 0.25 - 0.05 * late, 0.25 - 0.05 * late, 0.35 - 0.3 * late, 0.05)


def phase2_plan(ctrl):
    """Phase 2's planned steps, waiting for the training loop to set them; None on stop."""
    t0 = time.time()
    while int(ctrl[1]) <= 0:
        if int(ctrl[2]) or time.time() - t0 > 900:
            return None
        time.sleep(0.005)
    return int(ctrl[1])


def step_plan(args, step, ctrl):
    """(lengths, weights, kind lateness, phase-2 progress or None) of a step; None on stop.
    The row kinds move on with the step in both phases, as in run 3."""
    switch = int(ctrl[0])
    late = min(1.0, step / KIND_RAMP_STEPS)
    if step < switch:
        allowed = phase1_buckets(step, args.buckets)
        return allowed, [1.0] * len(allowed), late, None
    planned = phase2_plan(ctrl)
    if planned is None:
        return None
    q = min(1.0, (step - switch) / planned)
    allowed, weights, _ = phase2_mix(q, args.buckets, args.bucket_seconds)
    return allowed, weights, late, q


def make_batch(args, state, step, ctrl):
    sp, corpus, hay = state
    plan = step_plan(args, step, ctrl)
    if plan is None:
        return None
    allowed, weights, late, _ = plan
    rng = random.Random(f"batch/{args.seed}/{step}")
    t = rng.choices(allowed, weights)[0]
    rows = rows_for(args, t)
    x = np.empty((rows, t + 1), dtype=np.int64)
    answer = np.zeros((rows, t), dtype=np.bool_)
    count = lambda s: len(sp.encode(s))  # noqa: E731
    kw = kind_weights(late)
    for r in range(rows):
        seq, spans = [], []
        kind = rng.choices(KINDS, kw)[0]
        if kind == "task":
            task = rng.choice(tasks.TASKS)
            length = rng.randint(t // 2, t - t // 8)
            seed = rng.randrange(tasks.TRAIN_SEED_LIMIT)
            # Sized by characters per token (one encode); refitted exactly only if it overflows.
            p, a = encode_case(sp, tasks.make_case(task, length, seed, hay))
            if len(p) + len(a) + 1 > t + 1:
                p, a = encode_case(sp, tasks.make_case(task, t - t // 8, seed, hay, count))
            seq, spans = p + a + [EOS], [(len(p), len(p) + len(a) + 1)]
        elif kind == "drill":
            seq, spans = drill_row(sp, hay, rng, t)
        elif kind == "vtdrill":
            seq, spans = vartrack_drill_row(sp, hay, rng, t)
        elif kind == "repeat":
            seq, spans = repeat_row(rng, corpus, t, sp.vocab_size())
        seq = seq[: t + 1]
        for lo, hi in spans:  # target position j predicts seq[j + 1]
            answer[r, max(0, lo - 1) : min(hi - 1, t)] = True
        # Fill (or make) the row with a natural-text window.
        need = t + 1 - len(seq)
        if need > 0:
            start = rng.randrange(0, len(corpus) - need)
            seq = seq + corpus[start : start + need].tolist()
        x[r] = seq
    return torch.from_numpy(x), torch.from_numpy(answer)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def loss_fn(model, x, answer, answer_weight):
    inp, tgt = x[:, :-1], x[:, 1:]
    h = model.hidden(inp)
    logits = model.logits(h).float()
    ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    ce = ce.view(tgt.shape)
    lm = ce.mean()
    n_ans = answer.sum()
    ans = (ce * answer).sum() / n_ans.clamp(min=1)
    with torch.no_grad():
        ans_acc = ((logits.argmax(-1) == tgt) & answer).sum() / n_ans.clamp(min=1)
    return lm + answer_weight * ans, lm.detach(), ans.detach(), ans_acc


def lr_at(step, q, args):
    """Phase 1 (q None): linear warm-up over --warmup-steps, then the peak. Phase 2: a cosine
    from the peak to --min-lr-frac of it over q in [0, 1]."""
    if q is None:
        return args.lr * min(1.0, (step + 1) / args.warmup_steps)
    q = min(1.0, max(0.0, q))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * q)))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def probe_bucket(model, args, device, autocast, t):
    """Seconds of one forward+backward (no update) of a step of rows of t, and the peak GiB."""
    if args.debug_oom_above and t > args.debug_oom_above and not model.checkpointed(t):
        raise torch.cuda.OutOfMemoryError(f"simulated (--debug-oom-above {args.debug_oom_above})")
    rows = rows_for(args, t)
    x = torch.randint(3, model.cfg["vocab_size"], (rows, t + 1), device=device)
    ans = torch.zeros((rows, t), dtype=torch.bool, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = 3 if device.type == "cuda" else 1
    for i in range(runs):
        if i == min(1, runs - 1):
            sync(device)
            t0 = time.time()
        with autocast():
            loss = loss_fn(model, x, ans, 1.0)[0]
        loss.backward()
    sync(device)
    seconds = (time.time() - t0) / max(1, runs - 1)
    gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    model.zero_grad(set_to_none=True)
    return seconds, gib


def probe_step_times(model, args, device, autocast):
    """Seconds a step and peak GiB per length, longest first. A length that runs out of memory
    turns on activation checkpointing (each layer recomputed in backward) from it on, once."""
    times, gib = {}, {}
    for t in sorted(args.buckets, reverse=True):
        while True:
            try:
                times[t], gib[t] = probe_bucket(model, args, device, autocast, t)
                break
            except torch.cuda.OutOfMemoryError as e:
                if model.checkpointed(t):
                    raise
                message = str(e)[:80]
            # Out of the except clause: the failed step's tensors (held by the traceback) are
            # free now.
            model.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            model.checkpoint_from = t
            print(f"probe: rows of {t} ran out of memory ({message}); activation checkpointing "
                  f"from {t} on", flush=True)
    return dict(sorted(times.items())), dict(sorted(gib.items()))


def plan_phase2(args, elapsed, phase1_step_s, ratio, margin):
    """Phase 2's steps: the time left after the margin's phase-1 steps, over the expected seconds
    of a phase-2 step (probe times scaled by phase 1's measured/probed ratio, averaged over q)."""
    if args.steps:
        return None  # fixed by --steps: the caller takes steps - switch
    left = args.time_budget - elapsed - margin * phase1_step_s
    grid = [(k + 0.5) / 200 for k in range(200)]
    mean_s = sum(phase2_mix(q, args.buckets, args.bucket_seconds)[2] for q in grid) / len(grid)
    return max(1, int(left / (mean_s * ratio)))


# ------------------------------------------------------------------------------------------------
# Evaluation: teacher-forced exact match of the answer tokens = greedy decoding's exact match
# ------------------------------------------------------------------------------------------------


def eval_lengths(args):
    """The lengths reported: 1024 (or half the longest) up to the longest trained."""
    return [t for t in args.buckets if t >= min(1024, args.max_len // 2)]


def eval_cases_worker(job):
    data, task, length, seed = job
    sp = _EVAL_STATE["sp"]
    prompt_len = max(64, length - EVAL_ANSWER_ROOM)
    case = tasks.make_case(task, prompt_len, seed, _EVAL_STATE["hay"],
                           lambda s: len(sp.encode(s)))
    p, a = encode_case(sp, case)
    return task, length, p, a


_EVAL_STATE = {}


def eval_pool_init(data):
    os.nice(10)  # behind the training data workers: the cases are needed only at the end
    _EVAL_STATE["sp"] = spm.SentencePieceProcessor(model_file=os.path.join(data, "tokenizer.model"))
    _EVAL_STATE["hay"] = tasks.load_haystack(os.path.join(data, "corpus.txt"))


@torch.no_grad()
def evaluate(model, cases, device, autocast, max_tokens):
    """cases: list of (task, length, prompt_ids, answer_ids) -> {task: {length: stats}}."""
    model.eval()
    results = {}
    by_len = {}
    for c in cases:
        by_len.setdefault(c[1], []).append(c)
    for length, group in sorted(by_len.items()):
        t = max(len(p) + len(a) for _, _, p, a in group)
        rows = max(1, max_tokens // t)
        for i in range(0, len(group), rows):
            chunk = group[i : i + rows]
            x = torch.zeros((len(chunk), t), dtype=torch.long)
            for r, (_, _, p, a) in enumerate(chunk):
                x[r, : len(p) + len(a)] = torch.tensor(p + a)
            x = x.to(device)
            with autocast():
                h = model.hidden(x)
            for r, (task, _, p, a) in enumerate(chunk):
                pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=device)
                pred = model.logits(h[r, pos].float()).argmax(-1).tolist()
                ok_tokens = sum(int(u == v) for u, v in zip(pred, a))
                st = results.setdefault(task, {}).setdefault(length, [0, 0, 0, 0, 0])
                st[0] += int(pred == a)
                st[1] += 1
                st[2] += ok_tokens
                st[3] += len(a)
                st[4] = max(st[4], len(p) + len(a))
    model.train()
    return {task: {str(l): {"exact": s[0] / s[1], "token_acc": s[2] / s[3], "n": s[1],
                            "max_tokens": s[4]}
                   for l, s in sorted(per.items())} for task, per in results.items()}


# ------------------------------------------------------------------------------------------------
# Saving in Hugging Face format
# ------------------------------------------------------------------------------------------------


def save_hf(model, cfg, args, out):
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    tensors = {}
    for name, p in model.state_dict().items():
        if name.startswith("embed_tokens") or name.startswith("norm") or name.startswith("layers"):
            tensors["model." + name] = p.detach().to(torch.bfloat16).cpu().contiguous()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "hidden_size": cfg["hidden_size"],
        "head_dim": cfg["head_dim"],
        "initializer_range": 0.02,
        "intermediate_size": cfg["intermediate_size"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "mlp_bias": False,
        "num_attention_heads": cfg["num_attention_heads"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": cfg["rope_theta"],
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": cfg["vocab_size"],
    }
    tok_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": cfg["max_position_embeddings"],
        "tokenizer_class": "LlamaTokenizer",
    }
    gen_config = {"bos_token_id": BOS, "eos_token_id": EOS, "do_sample": False}
    for name, obj in (("config.json", config), ("tokenizer_config.json", tok_config),
                      ("generation_config.json", gen_config)):
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    with open(os.path.join(args.data, "tokenizer.model"), "rb") as src:
        with open(os.path.join(out, "tokenizer.model"), "wb") as dst:
            dst.write(src.read())


# ------------------------------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny model and sequences (CPU smoke)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds from the start to the last training step (480; --tiny: 60)")
    ap.add_argument("--steps", type=int, default=0, help="fix the step count (default: planned)")
    ap.add_argument("--max-len", type=int, default=None,
                    help="longest training row in tokens, = max_position_embeddings (4096; "
                    "--tiny: 512)")
    ap.add_argument("--min-len", type=int, default=256, help="shortest training row (tokens)")
    ap.add_argument("--rope-theta", type=float, default=10000.0,
                    help="RoPE base, written into config.json (the 32K recipe: 1e6)")
    ap.add_argument("--dims", default="", help="layers,hidden,intermediate,heads,kv_heads,"
                    "head_dim (default: the demo model's; --tiny: a tiny one)")
    ap.add_argument("--batch-tokens", type=int, default=65536)
    ap.add_argument("--long-batch-tokens", type=int, default=32768,
                    help="tokens a step for rows of --long-from or more (0: --batch-tokens)")
    ap.add_argument("--long-from", type=int, default=16384)
    ap.add_argument("--checkpoint-from", type=int, default=0,
                    help="activation checkpointing for rows of this many tokens or more (0: only "
                    "where the probe runs out of memory)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--answer-weight", type=float, default=1.0)
    ap.add_argument("--form-ans-loss", type=float, default=1.0,
                    help="phase 1 ends once the mean answer loss of the last --form-window steps "
                    "is below this (the copying circuit has formed) ...")
    ap.add_argument("--form-window", type=int, default=50)
    ap.add_argument("--form-margin", type=int, default=0,
                    help="... this many steps later (0: twice the prefetched steps + 8)")
    ap.add_argument("--form-max-steps", type=int, default=None,
                    help="phase 1's last step at most (2000; --tiny: 200)")
    ap.add_argument("--form-max-frac", type=float, default=0.45,
                    help="phase 1 ends by this fraction of --time-budget")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--eval-n", type=int, default=50, help="held-out cases per task and length")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--debug-oom-above", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tiny:
        args.max_len = args.max_len or 512
        args.time_budget = args.time_budget or 60.0
        args.form_max_steps = args.form_max_steps or 200
        args.warmup_steps = min(args.warmup_steps, 20)
        args.batch_tokens = min(args.batch_tokens, 2048)
        args.long_batch_tokens = min(args.long_batch_tokens, 2048)
        args.long_from = min(args.long_from, 2048)
        args.eval_n = min(args.eval_n, 8)
        args.workers = min(args.workers, 2)
    args.max_len = args.max_len or 4096
    args.time_budget = args.time_budget or 480.0
    args.form_max_steps = args.form_max_steps or 2000
    args.buckets = buckets_for(args.min_len, args.max_len)
    if not args.buckets or args.buckets[-1] != args.max_len:
        ap.error("--max-len must be --min-len times a power of two")
    args.prefetch = 4
    if not args.form_margin:
        args.form_margin = 2 * args.prefetch * max(1, args.workers) + 8
    if args.form_max_steps <= args.form_margin:
        ap.error(f"--form-max-steps must exceed --form-margin ({args.form_margin})")
    return args


def main():
    args = parse_args()
    t_start = time.time()

    # Held-out evaluation cases, generated in the background (before CUDA starts; fork).
    jobs = [(args.data, task, length, tasks.EVAL_SEED_BASE + i)
            for task in tasks.TASKS for length in eval_lengths(args) for i in range(args.eval_n)]
    pool = multiprocessing.get_context("fork").Pool(
        max(1, min(4, os.cpu_count() // 4)), initializer=eval_pool_init, initargs=(args.data,))
    eval_async = pool.map_async(eval_cases_worker, jobs, chunksize=4)

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # No math fallback for attention: it would hold T x T scores (34 GB at 32K). Flash,
        # cuDNN or memory-efficient attention keep O(T) memory; if none takes a shape, the probe
        # fails at once instead of the run failing later.
        torch.backends.cuda.enable_math_sdp(False)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.data, "tokenizer.model"))
    cfg = model_config(args, sp.vocab_size())
    model = Llama(cfg)
    model.init_weights(args.seed)
    model.checkpoint_from = args.checkpoint_from
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {json.dumps(cfg)}; {n_params / 1e6:.2f}M parameters; buckets {args.buckets}; "
          f"rows a step {[rows_for(args, t) for t in args.buckets]}", flush=True)

    if device.type == "cuda":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=False)  # noqa: E731

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")

    times, gib = probe_step_times(model, args, device, autocast)
    args.bucket_seconds = times
    print(f"probe seconds/step per bucket: { {t: round(v, 4) for t, v in times.items()} }; peak "
          f"GiB { {t: round(v, 1) for t, v in gib.items()} }; activation checkpointing from "
          f"{model.checkpoint_from or 'never'}; {time.time() - t_start:.0f} s since start",
          flush=True)

    # ctrl: [first step of phase 2, phase 2's planned steps (0: not yet), stop]; see Batches.
    ctrl = torch.zeros(3, dtype=torch.int64).share_memory_()
    ctrl[0] = args.form_max_steps
    loader = torch.utils.data.DataLoader(
        Batches(args, ctrl), batch_size=None, num_workers=args.workers,
        pin_memory=device.type == "cuda", prefetch_factor=args.prefetch if args.workers else None,
        persistent_workers=False,
        multiprocessing_context="fork" if args.workers else None)
    history = []
    t_train = time.time()
    tokens = 0
    step = 0
    log_every = 5 if args.tiny else 25
    acc = {"loss": 0.0, "lm": 0.0, "ans": 0.0, "ans_acc": 0.0, "n": 0}
    stopped_by_time = False
    margin = args.form_margin
    switch, planned2, t_switch = None, None, None  # phase 2: first step, steps, start time
    phase = {"switch_step": None}
    window = []  # answer losses of the last --form-window steps (phase 1)
    p1_mark = None  # (step, time, probe seconds so far) once phase 1's warm-up steps are past
    probe_sum = 0.0
    steps_at = {}  # steps per row length
    for x, answer in loader:
        elapsed = time.time() - t_start
        if switch is not None and step >= switch + planned2:
            break
        if elapsed >= args.time_budget:
            stopped_by_time = True
            break
        if switch is None:  # phase 1: decide the switch --form-margin steps ahead
            reason = None
            if len(window) == args.form_window and \
                    sum(window) / len(window) < args.form_ans_loss:
                reason = (f"answer loss (mean of the last {args.form_window} steps) "
                          f"{sum(window) / len(window):.3f} < {args.form_ans_loss}")
            elif step >= args.form_max_steps - margin:
                reason = f"step cap ({args.form_max_steps})"
            elif elapsed >= args.form_max_frac * args.time_budget:
                reason = f"time cap ({args.form_max_frac} of the budget)"
            if reason is not None:
                switch = min(step + margin, args.form_max_steps)
                if p1_mark is not None and step > p1_mark[0]:
                    step_s = (elapsed - p1_mark[1]) / (step - p1_mark[0])
                    ratio = step_s / max(1e-9, (probe_sum - p1_mark[2]) / (step - p1_mark[0]))
                else:
                    step_s, ratio = times[args.buckets[0]], 1.0
                ratio = min(1.5, max(0.8, ratio))
                planned2 = plan_phase2(args, elapsed, step_s, ratio, switch - step)
                if planned2 is None:
                    planned2 = max(1, args.steps - switch)
                ctrl[1] = planned2
                ctrl[0] = switch
                phase = {"decided_at_step": step, "decided_at_s": round(elapsed, 1),
                         "reason": reason, "switch_step": switch, "phase2_steps": planned2,
                         "phase1_seconds_per_step": round(step_s, 4),
                         "measured_over_probe": round(ratio, 3)}
                print(f"phase 1 ends: {reason} at step {step} ({elapsed:.0f} s); phase 2 from "
                      f"step {switch}, {planned2} steps planned (phase-1 step {step_s:.3f} s, "
                      f"measured/probe {ratio:.2f})", flush=True)
        if switch is not None and step == switch:
            t_switch = elapsed
            phase["switch_s"] = round(elapsed, 1)
        if switch is not None and step >= switch:
            q_time = (elapsed - t_switch) / max(1e-9, args.time_budget - t_switch)
            q = max((step - switch) / planned2, q_time)
        else:
            q = None
        lr = lr_at(step, q, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x = x.to(device, non_blocking=True)
        answer = answer.to(device, non_blocking=True)
        with autocast():
            loss, lm, ans, ans_acc = loss_fn(model, x, answer, args.answer_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t_row = x.shape[1] - 1
        tokens += x.shape[0] * t_row
        step += 1
        ans_f = float(ans)
        if switch is None:
            window = (window + [ans_f])[-args.form_window :]
            if step == 10:
                p1_mark = (step, time.time() - t_start, probe_sum)
        probe_sum += times[t_row]
        steps_at[t_row] = steps_at.get(t_row, 0) + 1
        for k, v in (("loss", float(loss.detach())), ("lm", float(lm)), ("ans", ans_f),
                     ("ans_acc", float(ans_acc))):
            acc[k] += v
        acc["n"] += 1
        if step % log_every == 0:
            n = acc["n"]
            rec = {"step": step, "seq": t_row, "lr": lr, "loss": acc["loss"] / n,
                   "lm_loss": acc["lm"] / n, "answer_loss": acc["ans"] / n,
                   "answer_token_acc": acc["ans_acc"] / n, "tokens": tokens,
                   "elapsed_s": round(time.time() - t_start, 1),
                   "phase": 1 if q is None else 2}
            if q is not None:
                rec["q"] = round(q, 4)
            history.append(rec)
            acc = {k: 0.0 for k in acc} | {"n": 0}
            tok_s = tokens / (time.time() - t_train)
            where = "p1" if q is None else f"p2 q={q:.2f}"
            total = "?" if switch is None else switch + planned2
            print(f"step {step}/{total} {where} T={t_row} lr={lr:.2e} loss={rec['loss']:.3f} "
                  f"lm={rec['lm_loss']:.3f} ans={rec['answer_loss']:.3f} "
                  f"ans_acc={rec['answer_token_acc']:.3f} {tok_s / 1e3:.0f}K tok/s "
                  f"t={rec['elapsed_s']}s", flush=True)
    ctrl[2] = 1  # workers waiting for a phase-2 plan stop
    del loader
    train_s = time.time() - t_train
    print(f"trained {step} steps, {tokens / 1e6:.1f}M tokens in {train_s:.0f} s"
          f"{' (stopped by the time budget)' if stopped_by_time else ''}; steps per length "
          f"{dict(sorted(steps_at.items()))}", flush=True)

    model.eval()
    save_hf(model, cfg, args, args.out)
    print(f"saved {args.out} at {time.time() - t_start:.0f} s", flush=True)

    log = {"args": {k: v for k, v in vars(args).items()}, "config": cfg, "parameters": n_params,
           "probe_seconds_per_step": times, "probe_peak_gib": gib,
           "checkpoint_from": model.checkpoint_from, "phases": phase,
           "planned_steps": None if switch is None else switch + planned2, "steps": step,
           "steps_per_length": dict(sorted(steps_at.items())), "tokens": tokens,
           "train_seconds": round(train_s, 1), "history": history}
    if device.type == "cuda":
        log["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    try:
        cases = eval_async.get(timeout=90)  # made in the background since the start
        pool.close()
        t_eval = time.time()
        log["eval"] = evaluate(model, cases, device, autocast, max_tokens=args.batch_tokens)
        log["eval_seconds"] = round(time.time() - t_eval, 1)
        print(f"dense teacher-forced exact match on held-out seeds (token accuracy), prompts "
              f"{EVAL_ANSWER_ROOM} tokens shorter than the length named:")
        for task, per in log["eval"].items():
            print(f"  {task:11s} " + "  ".join(
                f"{l}: {s['exact']:.2f} ({s['token_acc']:.2f})" for l, s in per.items()))
    except Exception as e:  # the model is saved already; report and go on
        print(f"evaluation failed: {e!r}", flush=True)
        log["eval_error"] = repr(e)
    log["total_seconds"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.out, "train_log.json"), "w", encoding="utf-8") as f:
        json.dump(log, f, indent=1, default=str)
        f.write("\n")
    print(f"done in {log['total_seconds']} s", flush=True)


if __name__ == "__main__":
    main()
