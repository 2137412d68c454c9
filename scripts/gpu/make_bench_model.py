#!/usr/bin/env python3
"""Random bf16 models in the shapes of Llama-3.2-1B and Llama-3-8B, for `npm run bench:engine --
--backend cuda` (weft and transformers read the same files). No network, no hub.

    python3 scripts/gpu/make_bench_model.py --shape llama1b|llama8b --out DIR [--seed 1]

Writes DIR/config.json (LlamaForCausalLM, llama3 rope scaling, bfloat16) and
DIR/model-0000i-of-0000n.safetensors + model.safetensors.index.json in Hugging Face names.
Matrices ~ N(0, 1/fan_in) drawn on the GPU (so a 16 GB model takes seconds), norms 1. Same shape
and seed -> same weights. Skips the work when DIR already holds the same shape.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

SHAPES = {
    # hidden, layers, heads, kv heads, ffn, vocab, tied
    "llama1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
               rope_theta=500000.0, max_position_embeddings=131072, attention_bias=False, mlp_bias=False,
               head_dim=s["hidden_size"] // s["num_attention_heads"], bos_token_id=128000, eos_token_id=128001,
               torch_dtype="bfloat16", weft_bench_shape=a.shape, weft_bench_seed=a.seed, **s)
    os.makedirs(a.out, exist_ok=True)
    cpath = os.path.join(a.out, "config.json")
    if os.path.exists(cpath) and os.path.exists(os.path.join(a.out, "model.safetensors.index.json")):
        old = json.load(open(cpath))
        if old.get("weft_bench_shape") == a.shape and old.get("weft_bench_seed") == a.seed:
            print(f"{a.out}: already there")
            return
    H, F, V, D = s["hidden_size"], s["intermediate_size"], s["vocab_size"], cfg["head_dim"]
    q, kv = s["num_attention_heads"] * D, s["num_key_value_heads"] * D
    gen = torch.Generator(device="cuda").manual_seed(a.seed)

    def mat(rows, cols):
        return (torch.randn(rows, cols, generator=gen, device="cuda", dtype=torch.float32) / cols ** 0.5).to(torch.bfloat16).cpu()

    def ones(n):
        return torch.ones(n, dtype=torch.bfloat16)

    shards, cur, size = [], {}, 0

    def add(name, t):
        nonlocal cur, size
        cur[name] = t
        size += t.numel() * 2
        if size >= 4 << 30:
            flush()

    def flush():
        nonlocal cur, size
        if cur:
            shards.append(cur)
            cur, size = {}, 0

    # embeddings ~ N(0, 1) like HF's init scale for random models keeps logits O(1) after the final norm
    add("model.embed_tokens.weight", (torch.randn(V, H, generator=gen, device="cuda") * 0.02).to(torch.bfloat16).cpu())
    for i in range(s["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", ones(H))
        add(p + "post_attention_layernorm.weight", ones(H))
        add(p + "self_attn.q_proj.weight", mat(q, H))
        add(p + "self_attn.k_proj.weight", mat(kv, H))
        add(p + "self_attn.v_proj.weight", mat(kv, H))
        add(p + "self_attn.o_proj.weight", mat(H, q))
        add(p + "mlp.gate_proj.weight", mat(F, H))
        add(p + "mlp.up_proj.weight", mat(F, H))
        add(p + "mlp.down_proj.weight", mat(H, F))
    add("model.norm.weight", ones(H))
    if not s["tie_word_embeddings"]:
        add("lm_head.weight", mat(V, H))
    flush()
    weight_map, total = {}, 0
    for i, sh in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, os.path.join(a.out, fname), metadata={"format": "pt"})
        for k, t in sh.items():
            weight_map[k] = fname
            total += t.numel() * 2
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(a.out, "model.safetensors.index.json"), "w"), indent=1)
    json.dump(cfg, open(cpath, "w"), indent=1)
    print(f"{a.out}: {a.shape}, {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
