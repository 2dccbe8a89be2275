#!/usr/bin/env python3
"""Random-weight models with the exact dimensions of Llama-3.1-8B, Llama-2-7B and Mistral-7B (but
2-4 layers), in bf16 and fp16, with transformers' fp32 reference outputs, for the CUDA backend's
real-shape parity test (tests/gpu/real_shape_parity_test.cc; issue 16 item 3).

Usage (on the GPU machine; tools/gpu/verify.sh parity runs it):
  python3 make_real_shape_models.py --out /tmp/real_shape [--layers 2] [--only llama-3.1-8b]
  python3 make_real_shape_models.py --out /tmp/tiny --tiny --device cpu   # the same at hidden 64

Writes <out>/<shape>-<dtype>/ for shape in SHAPES and dtype in bf16, fp16:
  - config.json (classic rope_theta / rope_scaling keys, as the published checkpoints spell them)
    and model.safetensors (weights rounded to the dtype); no tokenizer (the test feeds ids);
  - reference.safetensors: per prompt i, prompt{i}.ids, .prefill_logits, .decode_ids (64 greedy
    tokens) and .decode_logits, in the layout of tools/fixtures/README.md, computed by
    transformers in float32 with eager attention from the stored (rounded) weights;
  - reference.json: shapes, prompts, greedy tokens and the top-2 margin of every greedy choice.
Weights: tools/fixtures/hf_reference.init_weights (the fixtures' scales: sharp attention, logits
of std ~2), drawn on the device from a seeded generator. Prompts: seeded random ids, BOS first.
An 8B-width model of 2 layers is ~3 GB in bf16; the whole run takes about a minute on an H100.
"""

import argparse
import copy
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (HERE, os.path.join(HERE, "..", "fixtures")):  # hf_reference.py: repo or .carry
    if os.path.exists(os.path.join(path, "hf_reference.py")):
        sys.path.insert(0, path)
        break

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers.utils import logging as hf_logging

from hf_reference import classic_rope_config, init_weights, load_reference_model, reference_outputs, write_json

hf_logging.set_verbosity_error()

NUM_DECODE_STEPS = 64
PROMPT_LENGTHS = (9, 47, 150)  # tokens, BOS included; 150 + 64 crosses many 16-token blocks
SEED = 20261207

# The published configs' math-relevant keys (vocab, widths, heads, rope, eps, tying).
SHAPES = {
    "llama-3.1-8b": dict(
        model_cls=LlamaForCausalLM,
        config_cls=LlamaConfig,
        config=dict(
            vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5,
            rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
            },
            max_position_embeddings=131072, tie_word_embeddings=False,
            bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
        ),
    ),
    "llama-2-7b": dict(
        model_cls=LlamaForCausalLM,
        config_cls=LlamaConfig,
        config=dict(
            vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
            num_key_value_heads=32, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-5,
            max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        ),
    ),
    # sliding_window null, as Mistral-7B v0.2/v0.3 (and the Instruct-v0.3 users download) ship
    # it; v0.1's 4096 would change nothing at these lengths (prompt + 64 < 4096) and only make the
    # CUDA backend refuse longer sequences, so null is the configuration worth pinning.
    "mistral-7b": dict(
        model_cls=MistralForCausalLM,
        config_cls=MistralConfig,
        config=dict(
            vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-5,
            max_position_embeddings=32768, sliding_window=None, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2,
        ),
    ),
}

# --tiny: the same three configurations at hidden 64 (head_dim 16), for a CPU check of the script
# and of the C++ loader without a GPU.
TINY = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, head_dim=16)
TINY_KV_HEADS = {"llama-3.1-8b": 1, "llama-2-7b": 4, "mistral-7b": 1}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def shape_config(name, layers, tiny):
    spec = SHAPES[name]
    kwargs = dict(spec["config"], num_hidden_layers=layers, hidden_act="silu")
    if tiny:
        kwargs.update(TINY, num_key_value_heads=TINY_KV_HEADS[name])
        if "rope_scaling" in kwargs:
            kwargs["rope_scaling"] = dict(kwargs["rope_scaling"], original_max_position_embeddings=64)
    return spec["config_cls"](**kwargs)


def prompts_for(vocab_size, bos_id, seed):
    gen = torch.Generator().manual_seed(seed)
    return [[bos_id] + torch.randint(0, vocab_size, (n - 1,), generator=gen).tolist() for n in PROMPT_LENGTHS]


def step_margins(tensors, i):
    """Top-2 gap of each greedy choice of prompt i (absolute, and relative to the row's max |logit|)."""
    rows = torch.cat([tensors[f"prompt{i}.prefill_logits"][-1:], tensors[f"prompt{i}.decode_logits"][:-1]])
    top2 = rows.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    return gap, gap / rows.abs().max(dim=-1).values


def write_shape(out_root, name, layers, dtypes, device, tiny):
    t0 = time.time()
    config = shape_config(name, layers, tiny)
    config._attn_implementation = "eager"
    with torch.device(device):
        model = SHAPES[name]["model_cls"](config).eval()
    init_weights(model, SEED + layers, device=None if device == "cpu" else device)
    prompts = prompts_for(config.vocab_size, config.bos_token_id, SEED)
    lines = []
    for dtype_name in dtypes:
        model_dir = os.path.join(out_root, f"{name}-{dtype_name}")
        shutil.rmtree(model_dir, ignore_errors=True)
        os.makedirs(model_dir)
        # Cast a copy: Module.to() would also round the RoPE inv_freq buffer of `model`.
        copy.deepcopy(model).to(DTYPES[dtype_name]).save_pretrained(model_dir)
        classic_rope_config(os.path.join(model_dir, "config.json"))
        t1 = time.time()
        reference = load_reference_model(model_dir, device=None if device == "cpu" else device)
        check_round_trip(model, reference, DTYPES[dtype_name])
        tensors, summaries = reference_outputs(reference, prompts, NUM_DECODE_STEPS)
        del reference
        save_file(tensors, os.path.join(model_dir, "reference.safetensors"))
        record_prompts = []
        for i, ids in enumerate(prompts):
            gap, rel = step_margins(tensors, i)
            record_prompts.append({
                "length": len(ids),
                "ids": ids,
                "decode_ids": tensors[f"prompt{i}.decode_ids"].tolist(),
                "top2_margin": [round(float(g), 5) for g in gap],
                "top2_margin_rel": [round(float(r), 6) for r in rel],
                **summaries[i],
            })
        write_json(os.path.join(model_dir, "reference.json"), {
            "shape": name,
            "dtype": dtype_name,
            "layers": layers,
            "tiny": tiny,
            "weights_seed": SEED + layers,
            "model": "loaded from this directory with transformers, dtype=float32, "
                     "attn_implementation=eager, TF32 off",
            "generator": "tools/parity/make_real_shape_models.py",
            "versions": {"torch": torch.__version__, "transformers": transformers_version()},
            "decode_steps": NUM_DECODE_STEPS,
            "prompts": record_prompts,
        })
        smallest = min(float(step_margins(tensors, i)[1].min()) for i in range(len(prompts)))
        size = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir))
        lines.append(
            f"{name}-{dtype_name}: {layers} layers, {size / 1e9:.2f} GB, reference {time.time() - t1:.1f} s, "
            f"smallest relative top-2 margin {smallest:.2e}, prompt0 greedy "
            f"{tensors['prompt0.decode_ids'][:8].tolist()}..."
        )
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    lines.append(f"{name}: {time.time() - t0:.1f} s")
    return lines


@torch.no_grad()
def check_round_trip(original, reloaded, dtype):
    """The reloaded model (config incl. the rewritten rope keys, rounded weights) must compute
    what the in-memory one does with its weights rounded to `dtype`, on a short input."""
    rounded = {k: v.to(dtype).float() for k, v in original.state_dict().items()}
    probe = copy.deepcopy(original)
    probe.load_state_dict(rounded)
    ids = torch.arange(1, 20, device=next(original.parameters()).device)[None]
    want, got = probe(ids).logits, reloaded(ids).logits
    assert torch.allclose(want, got, rtol=1e-5, atol=1e-5), float((want - got).abs().max())
    for key in ("rope_theta", "rope_type", "factor", "original_max_position_embeddings"):
        assert reloaded.config.rope_parameters.get(key) == original.config.rope_parameters.get(key), key
    assert getattr(reloaded.config, "sliding_window", None) == getattr(original.config, "sliding_window", None)


def transformers_version():
    import transformers

    return transformers.__version__


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="root of the model directories (e.g. /tmp/real_shape)")
    parser.add_argument("--layers", type=int, default=2, choices=(2, 3, 4))
    parser.add_argument("--only", choices=sorted(SHAPES), action="append", help="build only these shapes")
    parser.add_argument("--dtypes", default="bf16,fp16", help="comma-separated subset of bf16,fp16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="hidden 64 instead of 4096 (CPU check)")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    assert all(d in DTYPES for d in dtypes), args.dtypes

    # The reference is float32: no TF32 in matmuls or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    os.makedirs(args.out, exist_ok=True)
    summary = []
    for name in args.only or SHAPES:
        summary += write_shape(args.out, name, args.layers, dtypes, args.device, args.tiny)
        print(summary[-1], flush=True)
    print("\n".join(summary))
    dirs = sorted(os.path.join(args.out, d) for d in os.listdir(args.out)
                  if os.path.exists(os.path.join(args.out, d, "reference.safetensors")))
    print("SALS_REAL_SHAPE_MODELS=" + ",".join(dirs))


if __name__ == "__main__":
    sys.exit(main())
