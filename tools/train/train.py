#!/usr/bin/env python3
"""Trains the demo model (models/sals-tiny-retrieval): a small Llama with RoPE and GQA, on natural
text mixed with synthetic long-context retrieval tasks (tasks.py), inside a fixed time budget.

Inputs (--data, written by make_corpus.py + prepare.py): corpus.txt, corpus_ids.bin,
tokenizer.model. Output (--out): a Hugging Face Llama directory our loader reads (config.json,
model.safetensors in bf16 with tied embeddings, tokenizer.model, tokenizer_config.json,
generation_config.json) and train_log.json (settings, loss curve, dense accuracy per task and
length on held-out seeds, timings).

  # the H200 run (about 8.5 minutes of wall time in all)
  python3 tools/train/train.py --data build-train/train-data --out OUT --time-budget 480
  # CPU smoke test (about a minute): tiny model, short sequences
  python3 tools/train/train.py --data build-train/train-data --out /tmp/tiny --device cpu --tiny

Training rows have fixed lengths (T = --min-len ... --max-len, powers of two; a batch holds about
--batch-tokens tokens). A row is a task case in the evaluation format (T/2..7T/8 tokens, then
natural text up to T), a multikey drill (every key asked and answered), a repeat (random tokens,
text, the same tokens again: the plainest exercise for copying heads) or natural text; drills
and repeats dominate early, task cases late, and the curriculum goes from short rows to long.
Loss: mean cross entropy over all tokens plus --answer-weight times the mean over answer tokens
(the answers are a few tokens among thousands; this keeps retrieval from drowning in the
language-model loss).
The number of steps is planned from a timed probe of each bucket so that the cosine schedule
ends inside --time-budget; a hard stop at the budget saves whatever was reached.
"""

import argparse
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
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402

BOS, EOS = 1, 2


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
        for layer in self.layers:
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
    return dict(vocab_size=vocab_size, rms_norm_eps=1e-5, rope_theta=10000.0,
                max_position_embeddings=args.max_len, **dims)


# ------------------------------------------------------------------------------------------------
# Data: each DataLoader worker builds whole batches; batch s comes from worker s % workers
# ------------------------------------------------------------------------------------------------


def buckets_for(min_len, max_len):
    out, t = [], min_len
    while t <= max_len:
        out.append(t)
        t *= 2
    return out


def bucket_weights(progress, buckets):
    """Curriculum: the two shortest buckets first, one longer bucket unlocked at a time until
    half-way, then all of them with the long ones weighted up. Copying a needle is learned on
    short rows, where it is a large part of the context, and then carried to long ones."""
    n = len(buckets)
    if progress < 0.5:
        allowed = buckets[: min(n, 2 + int(progress / 0.5 * (n - 1)))]
        return [1.0] * len(allowed), allowed
    return [1.0 + 0.5 * i for i in range(n)], buckets


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, args, planned_steps, start_step=0):
        super().__init__()
        self.args, self.planned, self.start = args, planned_steps, start_step
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
        step = self.start + wid
        while True:
            yield make_batch(self.args, self._setup(), step, self.planned)
            step += nw


def encode_case(sp, case):
    """Prompt ids (with BOS) and answer ids, split as the server sees them: the answer is what
    follows the prompt's own encoding (encoding the question line alone gives the same split)."""
    p = [BOS] + sp.encode(case["prompt"])
    q = case["prompt"][case["prompt"].rfind("\n") + 1 :]
    a = sp.encode(q + case["answer"])[len(sp.encode(q)) :]
    return p, a


def cont(sp, text):
    """Ids of `text` (starting with a space or punctuation) as it encodes after a word: pieces
    never span a space, so encoding "a" + text and dropping "▁a" gives them."""
    ids = sp.encode("a" + text)
    return ids[1:] if ids and ids[0] == sp.piece_to_id("\u2581a") else None


NEEDLE = re.compile(r"The special magic number for (\S+) is (\d+)\.")


def drill_row(sp, hay, rng, t):
    """A multikey case whose question is followed by questions about every other key, each
    answered: dense in-context retrieval targets (training only). Returns (ids, answer_spans)."""
    num_keys = rng.randint(2, 8)
    length = rng.randint(t // 4, t // 2)
    prompt, answer, _ = tasks.multikey(rng, hay, length, None, num_keys=num_keys)
    case = {"prompt": prompt, "answer": answer}
    p, a = encode_case(sp, case)
    ids, spans = p + a, [(len(p), len(p) + len(a))]
    pairs = NEEDLE.findall(prompt)
    asked = prompt.rsplit("for ", 1)[1].rsplit(" is", 1)[0]
    rest = [kv for kv in pairs if kv[0] != asked]
    rng.shuffle(rest)
    for i, (key, value) in enumerate(rest):
        q = cont(sp, (". " if i == 0 else " ") + f"What is the special magic number for {key}? "
                 f"The special magic number for {key} is")
        ans = cont(sp, f" {value}.")
        if q is None or ans is None or len(ids) + len(q) + len(ans) + 1 > t + 1:
            break
        ids += q
        spans.append((len(ids), len(ids) + len(ans)))
        ids += ans
    return ids + [EOS], spans


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


def make_batch(args, state, step, planned):
    sp, corpus, hay = state
    rng = random.Random(f"batch/{args.seed}/{step}")
    progress = step / planned
    weights, allowed = bucket_weights(progress, args.buckets)
    t = rng.choices(allowed, weights)[0]
    rows = max(1, args.batch_tokens // t)
    x = np.empty((rows, t + 1), dtype=np.int64)
    answer = np.zeros((rows, t), dtype=np.bool_)
    count = lambda s: len(sp.encode(s))  # noqa: E731
    # Row kinds: evaluation-format task cases, multikey drills, repeats, natural text. Drills
    # and repeats matter most early (forming copying heads), tasks later.
    late = min(1.0, progress / 0.5)
    kinds = ("task", "drill", "repeat", "text")
    kind_weights = (0.25 + 0.45 * late, 0.3 - 0.1 * late, 0.35 - 0.3 * late, 0.1 - 0.05 * late)
    for r in range(rows):
        seq, spans = [], []
        kind = rng.choices(kinds, kind_weights)[0]
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


def lr_at(progress, args):
    warm = args.warmup_frac
    if progress < warm:
        return args.lr * progress / warm
    p = min(1.0, (progress - warm) / (1 - warm))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def probe_step_times(model, args, device, autocast):
    """Seconds of one forward+backward per bucket (no update), to plan the number of steps."""
    times = {}
    for t in args.buckets:
        rows = max(1, args.batch_tokens // t)
        x = torch.randint(3, model.cfg["vocab_size"], (rows, t + 1), device=device)
        ans = torch.zeros((rows, t), dtype=torch.bool, device=device)
        for i in range(3 if device.type == "cuda" else 1):
            if i == 1 or device.type != "cuda":
                sync(device)
                t0 = time.time()
            with autocast():
                loss = loss_fn(model, x, ans, 1.0)[0]
            loss.backward()
        sync(device)
        times[t] = (time.time() - t0) / (2 if device.type == "cuda" else 1)
        model.zero_grad(set_to_none=True)
    return times


def plan_steps(times, args, budget):
    """Steps whose expected time (bucket mix of the curriculum) fills the budget."""
    def expected(steps):
        total = 0.0
        for s in range(0, steps, max(1, steps // 200)):
            w, allowed = bucket_weights(s / steps, args.buckets)
            total += sum(wi * times[t] for wi, t in zip(w, allowed)) / sum(w) * max(1, steps // 200)
        return total * 1.08 + 0.002 * steps  # optimizer step, data hand-off

    lo, hi = 10, 200000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if expected(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# Evaluation: teacher-forced exact match of the answer tokens = greedy decoding's exact match
# ------------------------------------------------------------------------------------------------


def eval_cases_worker(job):
    data, task, length, seed = job
    sp = _EVAL_STATE["sp"]
    case = tasks.make_case(task, length, seed, _EVAL_STATE["hay"], lambda s: len(sp.encode(s)))
    p, a = encode_case(sp, case)
    return task, length, p, a


_EVAL_STATE = {}


def eval_pool_init(data):
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
                st = results.setdefault(task, {}).setdefault(length, [0, 0, 0, 0])
                st[0] += int(pred == a)
                st[1] += 1
                st[2] += ok_tokens
                st[3] += len(a)
    model.train()
    return {task: {str(l): {"exact": s[0] / s[1], "token_acc": s[2] / s[3], "n": s[1]}
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny model and sequences (CPU smoke)")
    ap.add_argument("--time-budget", type=float, default=480.0, help="seconds of training steps")
    ap.add_argument("--steps", type=int, default=0, help="fix the step count (default: planned)")
    ap.add_argument("--max-len", type=int, default=4096, help="longest training row (tokens)")
    ap.add_argument("--min-len", type=int, default=256, help="shortest training row (tokens)")
    ap.add_argument("--dims", default="", help="layers,hidden,intermediate,heads,kv_heads,"
                    "head_dim (default: the demo model's; --tiny: a tiny one)")
    ap.add_argument("--batch-tokens", type=int, default=65536)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup-frac", type=float, default=0.04)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--answer-weight", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--eval-n", type=int, default=50, help="held-out cases per task and length")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if args.tiny:
        args.max_len = min(args.max_len, 512)
        args.batch_tokens = min(args.batch_tokens, 4096)
        args.eval_n = min(args.eval_n, 8)
        args.workers = min(args.workers, 2)
    args.buckets = buckets_for(args.min_len, args.max_len)
    t_start = time.time()

    # Held-out evaluation cases, generated in the background (before CUDA starts; fork).
    eval_lengths = [t for t in args.buckets if t >= min(1024, args.max_len // 2)]
    jobs = [(args.data, task, length, tasks.EVAL_SEED_BASE + i)
            for task in tasks.TASKS for length in eval_lengths for i in range(args.eval_n)]
    pool = multiprocessing.get_context("fork").Pool(
        max(1, min(4, os.cpu_count() // 4)), initializer=eval_pool_init, initargs=(args.data,))
    eval_async = pool.map_async(eval_cases_worker, jobs, chunksize=4)

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.data, "tokenizer.model"))
    cfg = model_config(args, sp.vocab_size())
    model = Llama(cfg)
    model.init_weights(args.seed)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {json.dumps(cfg)}; {n_params / 1e6:.2f}M parameters; buckets {args.buckets}",
          flush=True)

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

    times = probe_step_times(model, args, device, autocast)
    budget = args.time_budget - (time.time() - t_start)
    planned = args.steps or plan_steps(times, args, budget)
    print(f"probe seconds/step per bucket: { {t: round(v, 4) for t, v in times.items()} }; "
          f"planned steps {planned} for {budget:.0f} s", flush=True)

    loader = torch.utils.data.DataLoader(
        Batches(args, planned), batch_size=None, num_workers=args.workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if args.workers else None,
        persistent_workers=False)
    history = []
    t_train = time.time()
    tokens = 0
    step = 0
    log_every = 5 if args.tiny else 25
    acc = {"loss": 0.0, "lm": 0.0, "ans": 0.0, "ans_acc": 0.0, "n": 0}
    stopped_by_time = False
    for x, answer in loader:
        elapsed = time.time() - t_start
        progress = max(step / planned, elapsed / args.time_budget)
        if step >= planned or elapsed >= args.time_budget:
            stopped_by_time = step < planned
            break
        lr = lr_at(progress, args)
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
        tokens += x.shape[0] * (x.shape[1] - 1)
        step += 1
        for k, v in (("loss", loss.detach()), ("lm", lm), ("ans", ans), ("ans_acc", ans_acc)):
            acc[k] += float(v)
        acc["n"] += 1
        if step % log_every == 0 or step == planned:
            n = acc["n"]
            rec = {"step": step, "seq": x.shape[1] - 1, "lr": lr, "loss": acc["loss"] / n,
                   "lm_loss": acc["lm"] / n, "answer_loss": acc["ans"] / n,
                   "answer_token_acc": acc["ans_acc"] / n, "tokens": tokens,
                   "elapsed_s": round(time.time() - t_start, 1)}
            history.append(rec)
            acc = {k: 0.0 for k in acc} | {"n": 0}
            tok_s = tokens / (time.time() - t_train)
            print(f"step {step}/{planned} T={rec['seq']} lr={lr:.2e} loss={rec['loss']:.3f} "
                  f"lm={rec['lm_loss']:.3f} ans={rec['answer_loss']:.3f} "
                  f"ans_acc={rec['answer_token_acc']:.3f} {tok_s / 1e3:.0f}K tok/s "
                  f"t={rec['elapsed_s']}s", flush=True)
    del loader
    train_s = time.time() - t_train
    print(f"trained {step} steps, {tokens / 1e6:.1f}M tokens in {train_s:.0f} s"
          f"{' (stopped by the time budget)' if stopped_by_time else ''}", flush=True)

    model.eval()
    save_hf(model, cfg, args, args.out)
    print(f"saved {args.out} at {time.time() - t_start:.0f} s", flush=True)

    log = {"args": {k: v for k, v in vars(args).items()}, "config": cfg, "parameters": n_params,
           "probe_seconds_per_step": times, "planned_steps": planned, "steps": step,
           "tokens": tokens, "train_seconds": round(train_s, 1), "history": history}
    try:
        cases = eval_async.get(timeout=600)
        pool.close()
        t_eval = time.time()
        log["eval"] = evaluate(model, cases, device, autocast, max_tokens=args.batch_tokens)
        log["eval_seconds"] = round(time.time() - t_eval, 1)
        print("dense teacher-forced exact match on held-out seeds (token accuracy):")
        for task, per in log["eval"].items():
            print(f"  {task:11s} " + "  ".join(
                f"{l}: {s['exact']:.2f} ({s['token_acc']:.2f})" for l, s in per.items()))
    except Exception as e:  # the model is saved already; report and go on
        print(f"evaluation failed: {e!r}", flush=True)
        log["eval_error"] = repr(e)
    log["total_seconds"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.out, "train_log.json"), "w", encoding="utf-8") as f:
        json.dump(log, f, indent=1)
        f.write("\n")
    print(f"done in {log['total_seconds']} s", flush=True)


if __name__ == "__main__":
    main()
