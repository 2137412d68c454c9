#!/usr/bin/env python3
"""Reference logits from Hugging Face `transformers` for tiny random models (no network, no hub).

    python3 scripts/gpu/hf_fixtures.py --out OUT --tokenizer DIR_OR_tokenizer.json [--vocab 320]

--tokenizer is the tokenizer.json written by scripts/make-tiny-model.ts (or its directory; a
tokenizer_config.json next to it is carried along). When it holds more tokens than --vocab it is
trimmed: the first (vocab - #special) tokens of the BPE model are kept, merges that need a dropped
token are removed, and the special tokens are renumbered to the last ids, so the tokenizer size is
exactly the model's vocab_size. That is valid because the generator gives ids in merge order.

Writes, for each model NAME in {llama, qwen2, llama3_rope, llama_bf16}:

    OUT/NAME/config.json, generation_config.json, model.safetensors   (save_pretrained, safetensors)
    OUT/NAME/tokenizer.json, tokenizer_config.json
    OUT/NAME/logits.json:
      {"inputs": [[ids] x 2], "texts": [...],
       "logits": [[[vocab floats] per position] per input],    # f32 models: float64 on CPU
       "greedy": [[8 ids] per input],                          # argmax continuation, no sampling
       "dtype": "float64" | "bfloat16", "weights_dtype": ..., "transformers_version": ..., "torch_version": ...,
       "exact_f64": bool, "hf_native_max_abs_diff": float, ...}
    bf16 model: "logits"/"greedy" are computed in bfloat16 (HF's own bf16 CPU path) and
    "logits_f64"/"greedy_f64" with the same bf16 weights upcast to float64.
    OUT/manifest.json: versions, models, byte sizes.

float64 detail: transformers computes RMSNorm and the rotary cos/sin tables in float32 even for a
float64 model (LlamaRMSNorm casts to float32; the rotary module calls .float()), which limits its
"float64" logits to ~1e-7 relative. With --exact-f64 (the default) the RMSNorm and rotary modules of
the float64 copy are patched to stay in float64 (inv_freq recomputed in float64, incl. the llama3
rule), so the logits are float64 to ~1e-12 and a plain float64 reference should match them to ~1e-9.
The patched logits are checked against transformers' unpatched float64 logits (max abs diff recorded
as "hf_native_max_abs_diff"; the run fails when it exceeds 1e-4, i.e. the patch is wrong).
Attention runs with attn_implementation="sdpa" (the eager path does its softmax in float32).

Weights: from_config + torch.manual_seed, then re-initialized so the tests have something to catch:
matrices ~ N(0, 1/fan_in) (attention not uniform, logits O(1)), RMSNorm weights 1 + 0.1 N(0,1),
q/k/v biases 0.5 N(0,1). Sizes stay small (hidden 64, 2 layers, vocab 320): about 1.9 MB in total.

`python3 scripts/gpu/hf_fixtures.py --self-test --tokenizer T` checks the pure-python parts
(tokenizer trimming, JSON formatting) without torch.
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys
import types

SPECIAL = "<|endoftext|>"

TEXTS = [
    "The keeper climbed the steps and wrote the weather in his book.",
    "On Tuesday the children measured 12 mm of rain, then drew a chart!",
]

# model name -> (architecture, dtype, extra config)
MODELS = {
    "llama": ("llama", "float32", {"tie_word_embeddings": False, "max_position_embeddings": 128}),
    "qwen2": ("qwen2", "float32", {"tie_word_embeddings": True, "max_position_embeddings": 128}),
    # head_dim 16, theta 1e4: wavelengths 2*pi*1e4^(i/8) = 6.3, 19.9, 62.8, 199, ... ;
    # original_max_position_embeddings 64 puts the band edges at 64/4 = 16 and 64/1 = 64, so
    # i=0 is high-frequency (kept), i=1,2 are interpolated and i>=3 are divided by 8.
    "llama3_rope": (
        "llama",
        "float32",
        {
            "tie_word_embeddings": True,
            "max_position_embeddings": 256,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "llama_bf16": ("llama", "bfloat16", {"tie_word_embeddings": False, "max_position_embeddings": 128}),
}


# ---------------------------------------------------------------------------------------------
# tokenizer (pure python)


def load_tokenizer_files(path):
    """Returns (tokenizer_json_dict, tokenizer_config_dict_or_None)."""
    if os.path.isdir(path):
        tj_path = os.path.join(path, "tokenizer.json")
    else:
        tj_path = path
    with open(tj_path, "r", encoding="utf-8") as f:
        tj = json.load(f)
    tc = None
    tc_path = os.path.join(os.path.dirname(os.path.abspath(tj_path)), "tokenizer_config.json")
    if os.path.isfile(tc_path):
        with open(tc_path, "r", encoding="utf-8") as f:
            tc = json.load(f)
    return tj, tc


def tokenizer_size(tj):
    ids = set(tj["model"]["vocab"].values())
    for t in tj.get("added_tokens", []):
        ids.add(t["id"])
    return max(ids) + 1 if ids else 0


def trim_tokenizer(tj, tc, vocab_size):
    """Cuts a generator-made byte-level BPE tokenizer down to exactly `vocab_size` ids."""
    tj = copy.deepcopy(tj)
    tc = copy.deepcopy(tc) if tc is not None else None
    if tj.get("model", {}).get("type") != "BPE":
        raise ValueError("tokenizer.json: model.type must be BPE")
    size = tokenizer_size(tj)
    if size < vocab_size:
        raise ValueError(f"tokenizer has {size} ids, fewer than vocab {vocab_size}")
    added = sorted(tj.get("added_tokens", []), key=lambda t: t["id"])
    added_contents = {t["content"] for t in added}
    regular = {tok: i for tok, i in tj["model"]["vocab"].items() if tok not in added_contents}
    n_regular = vocab_size - len(added)
    if n_regular < 256:
        raise ValueError(f"vocab {vocab_size} leaves fewer than 256 byte tokens")
    ids = sorted(regular.values())
    if ids != list(range(len(ids))):
        raise ValueError("tokenizer.json: regular token ids are not contiguous from 0 (not a generator tokenizer?)")
    kept = {tok: i for tok, i in regular.items() if i < n_regular}
    merges_out = []
    for m in tj["model"]["merges"]:
        a, b = (m.split(" ", 1) if isinstance(m, str) else m)
        if a in kept and b in kept and (a + b) in kept:
            merges_out.append(m)
    remap = {}
    vocab = dict(sorted(kept.items(), key=lambda kv: kv[1]))
    for j, t in enumerate(added):
        new_id = n_regular + j
        remap[t["id"]] = new_id
        t["id"] = new_id
        if t["content"] in tj["model"]["vocab"]:
            vocab[t["content"]] = new_id
    tj["model"]["vocab"] = vocab
    tj["model"]["merges"] = merges_out
    tj["added_tokens"] = added
    if tc is not None and isinstance(tc.get("added_tokens_decoder"), dict):
        tc["added_tokens_decoder"] = {
            str(remap.get(int(k), int(k))): v for k, v in tc["added_tokens_decoder"].items()
        }
    if tokenizer_size(tj) != vocab_size:
        raise AssertionError("trim_tokenizer: size mismatch")
    return tj, tc


def default_tokenizer_config(tj, max_len):
    special = sorted(tj.get("added_tokens", []), key=lambda t: t["id"])
    eos = special[-1]["content"] if special else SPECIAL
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special") if k in t}
            for t in special
        },
        "bos_token": eos,
        "eos_token": eos,
        "unk_token": eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def special_id(tj):
    for t in tj.get("added_tokens", []):
        if t["content"] == SPECIAL:
            return t["id"]
    return tokenizer_size(tj) - 1


def fixed_inputs(tj_path, vocab_size, n=12):
    """Two sequences of n ids: the tokenized TEXTS (HF tokenizers), padded/cut to n ids."""
    seqs = []
    texts_used = []
    try:
        from tokenizers import Tokenizer  # noqa: WPS433

        tok = Tokenizer.from_file(tj_path)
        if tok.get_vocab_size(with_added_tokens=True) != vocab_size:
            raise AssertionError(
                f"tokenizer size {tok.get_vocab_size(with_added_tokens=True)} != vocab {vocab_size}"
            )
        for t in TEXTS:
            ids = tok.encode(t, add_special_tokens=False).ids
            assert tok.decode(ids, skip_special_tokens=False) == t, "tokenizer round trip failed"
            seqs.append(ids)
            texts_used.append(t)
    except ImportError:
        seqs = [[], []]
        texts_used = [None, None]
    out = []
    for k, ids in enumerate(seqs):
        ids = list(ids[:n])
        x = 1 + 97 * k
        while len(ids) < n:  # deterministic filler (LCG), below the special token
            x = (x * 1103515245 + 12345) % 2147483648
            ids.append(x % (vocab_size - 1))
        out.append(ids)
    return out, texts_used


def fmt_floats(values, digits):
    f = "%." + str(digits) + "g"
    return "[" + ",".join(f % v for v in values) + "]"


def logits_json(nested, digits):
    """[[[floats] per position] per input] as compact JSON text with `digits` significant digits."""
    return "[" + ",".join("[" + ",".join(fmt_floats(p, digits) for p in seq) + "]" for seq in nested) + "]"


def write_logits_file(path, meta, logits_fields):
    """meta: JSON-able dict; logits_fields: {key: (nested floats, digits)}; keys keep their order."""
    parts = []
    for k, v in meta.items():
        parts.append(json.dumps(k) + ":" + json.dumps(v, separators=(",", ":")))
    for k, (nested, digits) in logits_fields.items():
        parts.append(json.dumps(k) + ":" + logits_json(nested, digits))
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    json.loads(text)  # must parse
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------
# models (torch)


def build_config(arch, dtype, extra, args, vocab_size, eos_id):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        torch_dtype=dtype,
        use_cache=True,
    )
    common.update(extra)
    if arch == "llama":
        common.setdefault("rope_scaling", None)
        return LlamaConfig(attention_bias=False, mlp_bias=False, **common)
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, sliding_window=None, max_window_layers=args.layers, **common)
    raise ValueError(arch)


def make_model(cfg):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    except TypeError:
        cfg._attn_implementation = "sdpa"
        return AutoModelForCausalLM.from_config(cfg)


def reinit(model, seed):
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied params appear once
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, dtype=torch.float32))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, dtype=torch.float32))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, dtype=torch.float32) / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def inv_freq_f64(cfg):
    """HF default / llama3 inverse frequencies, computed in float64."""
    import torch

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    # transformers v5 keeps rope_theta and the scaling inside rope_parameters
    params = getattr(cfg, "rope_parameters", None) or {}
    base = float(getattr(cfg, "rope_theta", None) or params.get("rope_theta", 10000.0))
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    rs = getattr(cfg, "rope_scaling", None) or (params if params.get("rope_type", "default") != "default" else None)
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "default":
            return inv
        if kind != "llama3":
            raise ValueError(f"unsupported rope scaling {kind}")
        factor = float(rs["factor"])
        low = float(rs["low_freq_factor"])
        high = float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        low_wl = old / low
        high_wl = old / high
        out = inv.clone()
        for i in range(inv.numel()):
            f = float(inv[i])
            wl = 2 * math.pi / f
            if wl < high_wl:
                continue
            if wl > low_wl:
                out[i] = f / factor
            else:
                smooth = (old / wl - low) / (high - low)
                out[i] = (1 - smooth) * f / factor + smooth * f
        return out
    return inv


def patch_exact_f64(model, cfg):
    """Makes the RMSNorm and rotary modules of a float64 model compute in float64. Returns the patched class names."""
    import torch

    patched = []
    inv = inv_freq_f64(cfg)

    def norm_forward(self, hidden_states):
        var = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(var + self.variance_epsilon))

    def rope_forward(self, x, position_ids=None, *rest, **kw):
        if position_ids is None or not torch.is_tensor(position_ids):
            raise RuntimeError("rotary patch: unsupported call signature (no position_ids tensor)")
        scaling = float(getattr(self, "attention_scaling", 1.0))
        pos = position_ids.to(torch.float64)  # [bs, seq]
        freqs = pos[:, :, None] * inv.to(pos.device)[None, None, :]  # [bs, seq, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [bs, seq, D]
        return (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)

    for m in model.modules():
        cls = type(m).__name__
        if cls.endswith("RMSNorm") and hasattr(m, "variance_epsilon"):
            m.forward = types.MethodType(norm_forward, m)
            patched.append(cls)
        elif cls.endswith("RotaryEmbedding") and hasattr(m, "inv_freq"):
            m.forward = types.MethodType(rope_forward, m)
            patched.append(cls)
    if not any(c.endswith("RotaryEmbedding") for c in patched) or not any(c.endswith("RMSNorm") for c in patched):
        raise RuntimeError(f"exact-f64 patch found no rotary/RMSNorm modules (patched: {sorted(set(patched))})")
    return sorted(set(patched))


def run_logits(model, inputs):
    """Full-sequence logits per input: [[[vocab] per position] per input] (python floats)."""
    import torch

    out = []
    with torch.no_grad():
        for ids in inputs:
            x = torch.tensor([ids], dtype=torch.long)
            logits = model(input_ids=x, use_cache=False).logits[0]  # [seq, vocab]
            out.append(logits.to(torch.float64).tolist())
    return out


def run_greedy(model, inputs, steps):
    """Greedy continuation by full recomputation (no sampling, no stopping at EOS)."""
    import torch

    res = []
    with torch.no_grad():
        for ids in inputs:
            seq = list(ids)
            new = []
            for _ in range(steps):
                x = torch.tensor([seq], dtype=torch.long)
                last = model(input_ids=x, use_cache=False).logits[0, -1]
                nxt = int(torch.argmax(last).item())
                new.append(nxt)
                seq.append(nxt)
            res.append(new)
    return res


def max_abs_diff(a, b):
    m = 0.0
    for sa, sb in zip(a, b):
        for pa, pb in zip(sa, sb):
            for x, y in zip(pa, pb):
                m = max(m, abs(x - y))
    return m


def build_one(name, spec, args, tj, tc, out_dir, versions):
    import torch

    arch, dtype, extra = spec
    vocab = args.vocab
    eos_id = special_id(tj)
    cfg = build_config(arch, dtype, extra, args, vocab, eos_id)
    model = make_model(cfg)
    model.eval()
    reinit(model, args.seed + sorted(MODELS).index(name))
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = model.to(torch_dtype)
    model.save_pretrained(d, safe_serialization=True)
    for leftover in ("pytorch_model.bin",):
        if os.path.exists(os.path.join(d, leftover)):
            raise RuntimeError(f"{name}: save_pretrained wrote {leftover}")

    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc or default_tokenizer_config(tj, cfg.max_position_embeddings), f, ensure_ascii=False, indent=2)
        f.write("\n")

    inputs, texts = fixed_inputs(os.path.join(d, "tokenizer.json"), vocab, args.seq_len)

    # float64 copy of the (possibly bf16-rounded) weights
    m64 = copy.deepcopy(model).to(torch.float64)
    native64 = run_logits(m64, inputs)
    patched = []
    if args.exact_f64:
        patched = patch_exact_f64(m64, cfg)
    exact64 = run_logits(m64, inputs)
    diff = max_abs_diff(native64, exact64)
    # (a bf16 model's rotary inv_freq buffer was itself rounded to bf16, so its own float64 run
    # differs from the exact one by more; the check only holds for f32 models)
    if diff > 1e-4 and model.dtype != torch.bfloat16:
        raise RuntimeError(f"{name}: patched float64 logits differ from transformers' own by {diff} (patch is wrong)")
    greedy64 = run_greedy(m64, inputs, args.steps)

    meta = {
        "model": name,
        "architecture": arch,
        "weights_dtype": dtype,
        "inputs": inputs,
        "texts": texts,
        "transformers_version": versions["transformers"],
        "torch_version": versions["torch"],
        "seed": args.seed,
        "exact_f64": bool(args.exact_f64),
        "patched_modules": patched,
        "hf_native_max_abs_diff": diff,
        "note": "logits[i][p] = next-token logits after inputs[i][0..p]; greedy = argmax continuation",
    }
    fields = {}
    if dtype == "float32":
        meta["dtype"] = "float64"
        meta["greedy"] = greedy64
        fields["logits"] = (exact64, args.digits)
    else:
        lowp = run_logits(model, inputs)  # HF's own bf16 CPU forward
        greedy_low = run_greedy(model, inputs, args.steps)
        meta["dtype"] = dtype
        meta["greedy"] = greedy_low
        meta["greedy_f64"] = greedy64
        fields["logits"] = (lowp, 6)  # bf16 values need few digits
        fields["logits_f64"] = (exact64, args.digits)
    write_logits_file(os.path.join(d, "logits.json"), meta, fields)
    sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
    print(f"{name}: {sum(sizes.values())} bytes, hf_native_max_abs_diff={diff:.3g}, greedy={meta['greedy']}")
    return sizes


def self_test(args):
    tj, tc = load_tokenizer_files(args.tokenizer)
    t2, c2 = trim_tokenizer(tj, tc, args.vocab)
    assert tokenizer_size(t2) == args.vocab
    assert special_id(t2) == args.vocab - 1
    vocab = t2["model"]["vocab"]
    for m in t2["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        assert a in vocab and b in vocab and a + b in vocab, m
    if c2 is not None:
        assert str(args.vocab - 1) in c2["added_tokens_decoder"]
    tmp = os.path.join(args.out, "_selftest")
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(t2, f, ensure_ascii=False)
    inputs, texts = fixed_inputs(os.path.join(tmp, "tokenizer.json"), args.vocab, args.seq_len)
    assert len(inputs) == 2 and all(len(s) == args.seq_len for s in inputs)
    assert all(0 <= i < args.vocab for s in inputs for i in s)
    write_logits_file(
        os.path.join(tmp, "logits.json"),
        {"inputs": inputs, "texts": texts},
        {"logits": ([[[0.1, -2.5e-7, 3.0]] * 2] * 2, args.digits)},
    )
    with open(os.path.join(tmp, "logits.json")) as f:
        j = json.load(f)
    assert j["logits"][1][1][1] == -2.5e-7
    print(f"self-test ok: tokenizer trimmed to {tokenizer_size(t2)} ids, {len(t2['model']['merges'])} merges; inputs {inputs}")
    shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json from scripts/make-tiny-model.ts (or its dir)")
    ap.add_argument("--vocab", type=int, default=320, help="vocab_size of every model (tokenizer trimmed to it)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=12)
    ap.add_argument("--steps", type=int, default=8, help="greedy continuation length")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--digits", type=int, default=8, help="significant digits of float64 logits in logits.json")
    ap.add_argument("--no-exact-f64", dest="exact_f64", action="store_false")
    ap.add_argument("--only", action="append", choices=sorted(MODELS), help="build only these models")
    ap.add_argument("--self-test", action="store_true", help="check the pure-python parts (no torch)")
    args = ap.parse_args()
    if args.vocab > 512:
        sys.exit("--vocab must be <= 512 to keep the fixtures small")
    os.makedirs(args.out, exist_ok=True)

    if args.self_test:
        self_test(args)
        return

    import torch
    import transformers

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    tj, tc = load_tokenizer_files(args.tokenizer)
    tj, tc = trim_tokenizer(tj, tc, args.vocab)
    if tc is not None and "model_max_length" in tc:
        tc["model_max_length"] = 256

    manifest = {"versions": versions, "vocab": args.vocab, "seed": args.seed, "models": {}}
    total = 0
    for name in sorted(MODELS):
        if args.only and name not in args.only:
            continue
        sizes = build_one(name, MODELS[name], args, tj, tc, args.out, versions)
        manifest["models"][name] = {"files": sizes, "spec": {"arch": MODELS[name][0], "dtype": MODELS[name][1], **MODELS[name][2]}}
        total += sum(sizes.values())
    manifest["total_bytes"] = total
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"total {total} bytes in {args.out}")
    if total > 2_000_000:
        print("warning: fixtures exceed 2 MB", file=sys.stderr)


if __name__ == "__main__":
    main()
