#!/usr/bin/env python3
"""FP8 checkpoints in the Hugging Face layout, written by torch, with transformers' reference logits.

    python3 scripts/gpu/fp8_fixtures.py --out test/fixtures/hf [--tokenizer test/fixtures/hf/llama/tokenizer.json]

Writes, for each NAME in FP8_MODELS (test/engine-fp8.test.ts reads them):

    OUT/NAME/config.json         the tiny model's config (hf_fixtures.build_config) + quantization_config
    OUT/NAME/model.safetensors   linear weights as float8_e4m3fn with their scales; embeddings, norms,
                                 biases and the LM head in bfloat16, as FP8 checkpoints keep them
    OUT/NAME/logits.json         {"inputs", "logits" (float64), "greedy", ...} of the DEQUANTIZED model

Layouts:
    fp8_llama_tensor    quant_method "fp8" (vLLM / neuralmagic): weight_scale per tensor (shape []),
                        input_scale (static activations); layer 1's down_proj left in bf16 (ignored_layers)
    fp8_qwen2_channel   quant_method "compressed-tensors" (llm-compressor FP8): weight_scale [N, 1] in bf16,
                        q/k/v biases, input_scale
    fp8_llama_block     quant_method "fp8" with weight_block_size [32, 32] (transformers' FineGrainedFP8,
                        DeepSeek, Qwen3-FP8): weight_scale_inv [ceil(N/32), ceil(K/32)]; ffn 80, so the
                        last block row/column is partial

The fp8 values are torch's: (w / scale).to(torch.float8_e4m3fn), scale = max|w| / 448 per tensor,
row or block (rounded to the scale's dtype first). The reference model is a float64 transformers
model of the same config holding, for every linear weight, q.float() * scale.float() (float32, as
weft dequantizes) and, for the rest, the bf16 values; RMSNorm and RoPE patched to stay float64
(hf_fixtures.patch_exact_f64). transformers' own FP8 runtime is not the reference: it quantizes
activations, which weft does not. Where it can load a checkpoint here (FineGrainedFP8 needs a GPU),
its logits are compared anyway and the relative difference recorded ("hf_fp8_runtime_max_rel_diff",
expected around 1e-2) as a check that the files are in the layout transformers reads.
"""
import argparse
import copy
import json
import math
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_fixtures as hf  # noqa: E402

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FP8_MODELS = {
    "fp8_llama_tensor": dict(
        arch="llama", seed=20, layers=2, ffn=128, granularity="tensor", scale_dtype="float32", input_scales=True,
        keep=["model.layers.1.mlp.down_proj"],
        quant={"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head", "model.layers.1.mlp.down_proj"]},
        config={"tie_word_embeddings": False, "max_position_embeddings": 128},
    ),
    "fp8_qwen2_channel": dict(
        arch="qwen2", seed=21, layers=2, ffn=128, granularity="channel", scale_dtype="bfloat16", input_scales=True, keep=[],
        quant={
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "quantization_status": "compressed",
            "ignore": ["lm_head"],
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
                    "input_activations": {"num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False},
                }
            },
        },
        config={"tie_word_embeddings": True, "max_position_embeddings": 128},
    ),
    "fp8_llama_block": dict(
        arch="llama", seed=22, layers=2, ffn=80, granularity="block", block=[32, 32], scale_dtype="float32", input_scales=False, keep=[],
        quant={"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [32, 32]},
        config={"tie_word_embeddings": False, "max_position_embeddings": 128},
    ),
}


def quantize(w, spec):
    """w [N, K] float32 -> (q float8_e4m3fn [N, K], scale tensor as saved, dequantized float32 [N, K])."""
    import torch

    sdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec["scale_dtype"]]
    n, k = w.shape
    g = spec["granularity"]
    if g == "tensor":
        s = (w.abs().max().clamp(min=1e-12) / 448.0).to(sdt)  # shape [] as vLLM writes it
        full = s.float().expand(n, k)
    elif g == "channel":
        s = (w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0).to(sdt)  # [N, 1]
        full = s.float().expand(n, k)
    else:
        br, bc = spec["block"]
        gr, gc = math.ceil(n / br), math.ceil(k / bc)
        pad = torch.zeros(gr * br, gc * bc, dtype=torch.float32)
        pad[:n, :k] = w.abs()
        s = (pad.view(gr, br, gc, bc).amax(dim=(1, 3)).clamp(min=1e-12) / 448.0).to(sdt)  # [gr, gc]
        full = s.float().repeat_interleave(br, 0).repeat_interleave(bc, 1)[:n, :k]
    q = (w / full).to(torch.float8_e4m3fn)
    deq = q.float() * full  # float32 product: what weft computes
    return q, s, deq


def build_fp8(name, spec, args, tj, versions):
    import torch
    from safetensors.torch import save_file

    eos_id = hf.special_id(tj)
    base = dict(arch=spec["arch"], dtype="float32", config=spec["config"], layers=spec["layers"], ffn=spec["ffn"])
    cfg = hf.build_config(base, args, args.vocab, eos_id)
    model = hf.make_model(cfg, "sdpa")
    model.eval()
    hf.reinit(model, args.seed + spec["seed"])
    d = os.path.join(args.out, name)
    os.makedirs(d, exist_ok=True)

    saved, deq = {}, {}
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for key, p in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        module = key.rsplit(".", 1)[0]
        w = p.detach().float()
        if key.endswith(".weight") and module.split(".")[-1] in LINEAR and module not in spec["keep"]:
            q, s, dq = quantize(w, spec)
            saved[key] = q.contiguous()
            saved[module + (".weight_scale_inv" if spec["granularity"] == "block" else ".weight_scale")] = s.contiguous()
            if spec["input_scales"]:
                saved[module + ".input_scale"] = torch.tensor(0.0123, dtype=torch.float32)
            deq[key] = dq
        else:
            b = w.to(torch.bfloat16)
            saved[key] = b.contiguous()
            deq[key] = b.float()
    save_file(saved, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(d)
    path = os.path.join(d, "config.json")
    with open(path, encoding="utf-8") as f:
        c = json.load(f)
    c["quantization_config"] = copy.deepcopy(spec["quant"])
    c.pop("dtype", None)
    c["torch_dtype"] = "bfloat16"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")

    # the reference: the dequantized weights in a float64 model of the same config
    m64 = hf.make_model(cfg, "sdpa").to(torch.float64)
    m64.eval()
    missing, unexpected = m64.load_state_dict({k: v.to(torch.float64) for k, v in deq.items()}, strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing) or (missing and not tied):
        raise RuntimeError(f"{name}: state dict mismatch: missing {missing}, unexpected {unexpected}")
    if tied:
        m64.tie_weights()
    inputs, texts = hf.fixed_inputs(args.tokenizer_file, args.vocab, (args.seq_len, args.seq_len))
    native64 = hf.run_logits(m64, inputs)
    patched, restore = hf.patch_exact_f64(m64, m64.config)
    try:
        exact64 = hf.run_logits(m64, inputs)
        greedy64 = hf.run_greedy(m64, inputs, args.steps)
    finally:
        if restore:
            restore()
    diff = hf.max_abs_diff(native64, exact64)
    if diff > 1e-4:
        raise RuntimeError(f"{name}: patched float64 logits differ from transformers' own by {diff} (patch is wrong)")

    meta = {
        "model": name,
        "architecture": spec["arch"],
        "weights_dtype": "float8_e4m3fn",
        "layout": {k: spec[k] for k in ("granularity", "scale_dtype", "input_scales", "keep") if k in spec} | ({"block": spec["block"]} if "block" in spec else {}),
        "inputs": inputs,
        "texts": texts,
        "dtype": "float64",
        "greedy": greedy64,
        "transformers_version": versions["transformers"],
        "torch_version": versions["torch"],
        "seed": args.seed,
        "patched_modules": patched,
        "hf_native_max_abs_diff": diff,
        "note": "logits of the dequantized model (fp8 x scale in float32, then float64); logits[i][p] after inputs[i][0..p]",
    }
    meta["hf_fp8_runtime_max_rel_diff"] = fp8_runtime_check(d, inputs, exact64)
    hf.write_logits_file(os.path.join(d, "logits.json"), meta, {"logits": (exact64, args.digits)})
    sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
    print(f"{name}: {sum(sizes.values())} bytes, hf_native_max_abs_diff={diff:.3g}, "
          f"hf_fp8_runtime_max_rel_diff={meta['hf_fp8_runtime_max_rel_diff']}, greedy={greedy64}", flush=True)
    return sizes


def fp8_runtime_check(d, inputs, want):
    """transformers' own FP8 load of the checkpoint, when it can here: max |diff| / max |ref| (or why not)."""
    try:
        import torch

        model = hf.load_model(d, "sdpa", torch.bfloat16)
        if torch.cuda.is_available():
            model = model.to("cuda")
        model.eval()
        worst = 0.0
        with torch.no_grad():
            for ids, ref in zip(inputs, want):
                x = torch.tensor([ids], dtype=torch.long, device=model.device)
                got = model(input_ids=x, use_cache=False).logits[0].double().cpu()
                r = torch.tensor(ref, dtype=torch.float64)
                worst = max(worst, float(((got - r).abs().amax(dim=1) / r.abs().amax(dim=1)).max()))
        return worst
    except Exception as e:  # noqa: BLE001 (recorded, not fatal: the reference is the dequantized model)
        return f"not run: {type(e).__name__}: {str(e)[:200]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="test/fixtures/hf")
    ap.add_argument("--tokenizer", default="test/fixtures/hf/llama/tokenizer.json", help="a tokenizer.json of --vocab ids (the fixtures')")
    ap.add_argument("--vocab", type=int, default=320)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=10)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--digits", type=int, default=8)
    ap.add_argument("--only", action="append", choices=sorted(FP8_MODELS))
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    tj, tc = hf.load_tokenizer_files(args.tokenizer)
    tj, _ = hf.trim_tokenizer(tj, tc, args.vocab)
    args.tokenizer_file = args.tokenizer if not os.path.isdir(args.tokenizer) else os.path.join(args.tokenizer, "tokenizer.json")
    os.makedirs(args.out, exist_ok=True)

    path = os.path.join(args.out, "manifest.json")
    manifest = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    manifest.setdefault("models", {})
    failed = []
    for name in sorted(FP8_MODELS):
        if args.only and name not in args.only:
            continue
        try:
            sizes = build_fp8(name, FP8_MODELS[name], args, tj, versions)
        except Exception:  # the others still get built; the run fails at the end
            traceback.print_exc()
            failed.append(name)
            continue
        spec = {k: v for k, v in FP8_MODELS[name].items() if k not in ("config", "quant")}
        manifest["models"][name] = {"files": sizes, "versions": versions, "spec": {**spec, **FP8_MODELS[name]["config"]}, "generator": "scripts/gpu/fp8_fixtures.py"}
    manifest["total_bytes"] = sum(sum(m["files"].values()) for m in manifest["models"].values())
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"total {manifest['total_bytes']} bytes in {args.out}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
