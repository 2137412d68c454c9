#!/usr/bin/env python3
"""Reference logits from Hugging Face `transformers` for tiny random models (no network, no hub).

    python3 scripts/gpu/hf_fixtures.py --out OUT --tokenizer DIR_OR_tokenizer.json [--vocab 320]

--tokenizer is the tokenizer.json written by scripts/make-tiny-model.ts (or its directory; a
tokenizer_config.json next to it is carried along). When it holds more tokens than --vocab it is
trimmed: the first (vocab - #special) tokens of the BPE model are kept, merges that need a dropped
token are removed, and the special tokens are renumbered to the last ids, so the tokenizer size is
exactly the model's vocab_size. That is valid because the generator gives ids in merge order.

Writes, for each model NAME in MODELS (llama, qwen2, llama3_rope, llama_bf16; qwen3, gemma2, gemma3,
phi3, mistral_sw, qwen2_sw):

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
    OUT/manifest.json: versions, models, byte sizes (merged into the one already in OUT, if any).
    "max_context" (phi3): per input, the engine context to run it with. weft picks LongRoPE's
    factors by its context (docs/models.md), transformers by the sequence length: the short input
    is checked with a context within original_max_position_embeddings, the long one beyond it.

Some configs are rewritten after save_pretrained into the form the Hub's checkpoints have
(transformers v4: rope_theta/rope_scaling/rope_local_base_freq/sliding_window_pattern for gemma3,
rope_scaling/partial_rotary_factor for phi3, no layer_types for qwen2_sw), and every model is then
loaded back from its directory, so the logits are those of the files as written.

float64 detail: transformers computes RMSNorm and the rotary cos/sin tables in float32 even for a
float64 model (LlamaRMSNorm casts to float32; the rotary module calls .float()), which limits its
"float64" logits to ~1e-7 relative. With --exact-f64 (the default) the RMSNorm and rotary modules of
the float64 copy are patched to stay in float64 (inv_freq recomputed in float64, incl. the llama3
rule), so the logits are float64 to ~1e-12 and a plain float64 reference should match them to ~1e-9.
The patched logits are checked against transformers' unpatched float64 logits (max abs diff recorded
as "hf_native_max_abs_diff"; the run fails when it exceeds 1e-4, i.e. the patch is wrong).
Attention runs with attn_implementation="sdpa" (the eager path does its softmax in float32).

Gemma's RMSNorm (1 + w), its two-table rotary module and Gemma 2's soft-capped eager attention
(softmax in float32 otherwise) get float64 patches of their own.

Weights: from_config + torch.manual_seed, then re-initialized so the tests have something to catch:
matrices ~ N(0, 1/fan_in) (attention not uniform, logits O(1)), RMSNorm weights 1 + 0.1 N(0,1)
(Gemma's, stored as w in (1 + w): 0.1 N(0,1)), biases 0.5 N(0,1). Sizes stay small (hidden 64,
2-4 layers, vocab 320).

`python3 scripts/gpu/hf_fixtures.py --self-test --tokenizer T` checks the pure-python parts
(tokenizer trimming, JSON formatting) without torch.

FP8 checkpoints (fp8_* fixtures, test/engine-fp8.test.ts) come from scripts/gpu/fp8_fixtures.py, which
reuses this file's configs, initialization and float64 patches.
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys
import traceback
import types

SPECIAL = "<|endoftext|>"

TEXTS = [
    "The keeper climbed the steps and wrote the weather in his book.",
    "On Tuesday the children measured 12 mm of rain, then drew a chart!",
]

# model name -> spec: arch, dtype, config (extra config fields), seed (offset; fixed so that adding a
# model never changes another's weights), and optionally layers, ffn, seq_lens (per input), attn
# ("sdpa" or "eager"), hub_form (rewrite config.json as the Hub has it), max_context (per input)
LONGROPE_SHORT = [1.0, 1.05, 1.2, 1.5, 2.0, 2.5]
LONGROPE_LONG = [1.0, 1.5, 2.5, 4.0, 6.0, 8.0]
MODELS = {
    "llama": dict(arch="llama", dtype="float32", seed=0, config={"tie_word_embeddings": False, "max_position_embeddings": 128}),
    "qwen2": dict(arch="qwen2", dtype="float32", seed=3, config={"tie_word_embeddings": True, "max_position_embeddings": 128}),
    # head_dim 16, theta 1e4: wavelengths 2*pi*1e4^(i/8) = 6.3, 19.9, 62.8, 199, ... ;
    # original_max_position_embeddings 64 puts the band edges at 64/4 = 16 and 64/1 = 64, so
    # i=0 is high-frequency (kept), i=1,2 are interpolated and i>=3 are divided by 8.
    "llama3_rope": dict(
        arch="llama",
        dtype="float32",
        seed=1,
        config={
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
    "llama_bf16": dict(arch="llama", dtype="bfloat16", seed=2, config={"tie_word_embeddings": False, "max_position_embeddings": 128}),
    # per-head q/k norms, head_dim (24) unlike hidden / heads (16)
    "qwen3": dict(arch="qwen3", dtype="float32", seed=4, ffn=64, config={"tie_word_embeddings": True, "max_position_embeddings": 128, "head_dim": 24}),
    # layer 2 of 4 global (pattern 3: base 1e6, linear x2), layers 0, 1, 3 local (window 6, base 1e4);
    # queries scaled by 24^-0.5 though head_dim is 16; final logits capped at 4
    "gemma3": dict(
        arch="gemma3", dtype="float32", seed=5, layers=4, ffn=64, seq_lens=[20, 20], hub_form=True,
        config={
            "tie_word_embeddings": True,
            "max_position_embeddings": 128,
            "head_dim": 16,
            "query_pre_attn_scalar": 24,
            "sliding_window": 6,
            "sliding_window_pattern": 3,
            "rope_theta": 1e6,
            "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
            "final_logit_softcapping": 4.0,
        },
    ),
    # attention scores capped at 2 (eager attention: SDPA ignores the cap), q/k/v/o biases
    "gemma2": dict(
        arch="gemma2", dtype="float32", seed=6, ffn=64, seq_lens=[16, 16], attn="eager",
        config={
            "tie_word_embeddings": True,
            "max_position_embeddings": 128,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 6,
            "attn_logit_softcapping": 2.0,
            "final_logit_softcapping": 3.0,
            "attention_bias": True,
        },
    ),
    # 12 of 16 dims rotated; LongRoPE with original context 32: the 12-token input uses the short
    # factors, the 40-token one the long factors (and the attention factor sqrt(1 + ln 4 / ln 32))
    "phi3": dict(
        arch="phi3", dtype="float32", seed=7, ffn=64, seq_lens=[12, 40], max_context=[32, 128], hub_form=True,
        config={
            "tie_word_embeddings": False,
            "max_position_embeddings": 128,
            "original_max_position_embeddings": 32,
            "partial_rotary_factor": 0.75,
            "rope_scaling": {"type": "longrope", "short_factor": LONGROPE_SHORT, "long_factor": LONGROPE_LONG},
        },
    ),
    "mistral_sw": dict(
        arch="mistral", dtype="float32", seed=8, ffn=64, seq_lens=[20, 20],
        config={"tie_word_embeddings": True, "max_position_embeddings": 128, "sliding_window": 6},
    ),
    # layer 0 global, layers 1 and 2 windowed (max_window_layers 1)
    "qwen2_sw": dict(
        arch="qwen2", dtype="float32", seed=9, layers=3, ffn=64, seq_lens=[20, 20], hub_form=True,
        config={"tie_word_embeddings": True, "max_position_embeddings": 128, "use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1},
    ),
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


def fixed_inputs(tj_path, vocab_size, lens=(12, 12)):
    """One sequence per length: the tokenized TEXTS (HF tokenizers), padded/cut to that many ids."""
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
    for k, n in enumerate(lens):
        ids = list(seqs[k % len(seqs)][:n])
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


def build_config(spec, args, vocab_size, eos_id):
    import transformers as tf

    arch = spec["arch"]
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=spec.get("ffn", args.ffn),
        num_hidden_layers=spec.get("layers", args.layers),
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        torch_dtype=spec["dtype"],
        use_cache=True,
    )
    if arch.startswith("gemma"):
        kw["hidden_activation"] = "gelu_pytorch_tanh"
    else:
        kw["hidden_act"] = "silu"
    if arch == "llama":
        kw.update(attention_bias=False, mlp_bias=False, rope_scaling=None)
    elif arch == "qwen2":
        kw.update(use_sliding_window=False, sliding_window=None, max_window_layers=kw["num_hidden_layers"])
    elif arch == "phi3":
        kw["pad_token_id"] = eos_id  # the default (32000) is past the tiny vocab
    kw.update(copy.deepcopy(spec["config"]))
    cls = {
        "llama": tf.LlamaConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "mistral": tf.MistralConfig,
        "gemma2": tf.Gemma2Config,
        "gemma3": tf.Gemma3TextConfig,
        "phi3": tf.Phi3Config,
    }[arch]
    return cls(**kw)


def make_model(cfg, attn):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    except TypeError:
        cfg._attn_implementation = attn
        return AutoModelForCausalLM.from_config(cfg)


def load_model(d, attn, torch_dtype):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(d, attn_implementation=attn, dtype=torch_dtype)
    except TypeError:
        return AutoModelForCausalLM.from_pretrained(d, attn_implementation=attn, torch_dtype=torch_dtype)


def is_gemma(cfg):
    return getattr(cfg, "model_type", "").startswith("gemma")


def reinit(model, seed):
    import torch

    gemma = is_gemma(model.config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied params appear once
            if name.endswith("norm.weight"):
                w = 0.1 * torch.randn(p.shape, dtype=torch.float32)
                p.copy_(w if gemma else 1.0 + w)  # Gemma's norms multiply by (1 + w)
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, dtype=torch.float32))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, dtype=torch.float32) / math.sqrt(p.shape[1]))
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


# ---------------------------------------------------------------------------------------------
# configs as the Hub has them (pure python)


def sliding_pattern(layer_types):
    """The p with layer i global exactly when (i + 1) % p == 0 (Gemma 3's sliding_window_pattern)."""
    for p in range(1, len(layer_types) + 1):
        want = ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(len(layer_types))]
        if want == layer_types:
            return p
    raise ValueError(f"layer_types {layer_types} follow no sliding_window_pattern")


def hub_form(arch, c):
    """A config.json dict as transformers v5 saves it, rewritten the way the Hub's checkpoints have it."""
    c = copy.deepcopy(c)
    if arch in ("gemma3", "phi3"):
        c.pop("rope_scaling", None)
    if arch == "gemma3":
        rp = c.pop("rope_parameters")
        full, sliding = rp["full_attention"], rp["sliding_attention"]
        assert sliding.get("rope_type", "default") == "default", sliding
        c["rope_theta"] = full["rope_theta"]
        c["rope_local_base_freq"] = sliding["rope_theta"]
        if full.get("rope_type", "default") != "default":
            c["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
        c["sliding_window_pattern"] = sliding_pattern(c.pop("layer_types"))
        c.pop("_sliding_window_pattern", None)
    elif arch == "phi3":
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp["rope_theta"]
        c["partial_rotary_factor"] = rp["partial_rotary_factor"]
        c["original_max_position_embeddings"] = rp["original_max_position_embeddings"]
        moved = ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings", "rope_type", "type")
        c["rope_scaling"] = {"type": rp["rope_type"], **{k: v for k, v in rp.items() if k not in moved}}
    elif arch == "qwen2":
        lt = c.pop("layer_types")
        mwl = c["max_window_layers"]
        want = ["sliding_attention" if c["use_sliding_window"] and i >= mwl else "full_attention" for i in range(len(lt))]
        assert lt == want, (lt, want)
    else:
        raise ValueError(f"no Hub form for {arch}")
    return c


# ---------------------------------------------------------------------------------------------
# float64 references (torch)


def rope_params(cfg, layer_type=None):
    rp = dict(getattr(cfg, "rope_parameters", None) or {})
    if layer_type is not None:
        rp = dict(rp[layer_type])
    rp.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return rp


def inv_freq_f64(cfg, rp, seq_len):
    """transformers' inverse frequencies (default, linear, llama3, longrope), computed in float64."""
    import torch

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dim = int(head_dim * rp.get("partial_rotary_factor", 1.0))
    base = float(rp["rope_theta"])
    expo = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "longrope":  # long factors when the sequence outgrows the original context
        ext = rp["long_factor"] if seq_len > rp["original_max_position_embeddings"] else rp["short_factor"]
        return 1.0 / (torch.tensor(ext, dtype=torch.float64) * base**expo)
    inv = 1.0 / (base**expo)
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(rp["factor"])
    if kind != "llama3":
        raise ValueError(f"unsupported rope type {kind}")
    factor = float(rp["factor"])
    low = float(rp["low_freq_factor"])
    high = float(rp["high_freq_factor"])
    old = float(rp["original_max_position_embeddings"])
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


def cos_sin_f64(cfg, rp, position_ids, scaling, dtype):
    import torch

    pos = position_ids.to(torch.float64)  # [bs, seq]
    inv = inv_freq_f64(cfg, rp, int(position_ids.max()) + 1)
    freqs = pos[:, :, None] * inv.to(pos.device)[None, None, :]  # [bs, seq, dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def eager_attention_f64(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    """Eager attention (soft-capped when asked) with its softmax in the inputs' dtype, not float32."""
    import torch

    groups = module.num_key_value_groups
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    w = torch.matmul(query, key.transpose(2, 3)) * (module.head_dim**-0.5 if scaling is None else scaling)
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            w = w.masked_fill(~attention_mask, float("-inf"))
        else:
            w = w + attention_mask[:, :, :, : key.shape[-2]]
    w = torch.softmax(w, dim=-1)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


def patch_exact_f64(model, cfg):
    """Makes the RMSNorm, rotary and eager attention of a float64 model compute in float64. Returns what was patched."""
    import importlib

    import torch

    patched = []

    def norm_forward(self, hidden_states):
        var = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(var + self.variance_epsilon))

    def gemma_norm_forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)

    def rope_forward(self, x, position_ids=None, *rest, **kw):
        if position_ids is None or not torch.is_tensor(position_ids):
            raise RuntimeError("rotary patch: unsupported call signature (no position_ids tensor)")
        return cos_sin_f64(cfg, rope_params(cfg), position_ids, float(getattr(self, "attention_scaling", 1.0)), x.dtype)

    def layer_type_rope_forward(self, x, position_ids, layer_type=None):
        scaling = float(getattr(self, f"{layer_type}_attention_scaling", 1.0))
        return cos_sin_f64(cfg, rope_params(cfg, layer_type), position_ids, scaling, x.dtype)

    for m in model.modules():
        cls = type(m).__name__
        if cls.endswith("RMSNorm") and hasattr(m, "variance_epsilon"):
            m.forward = types.MethodType(norm_forward, m)
            patched.append(cls)
        elif cls.endswith("RMSNorm") and cls.startswith("Gemma") and hasattr(m, "eps"):
            m.forward = types.MethodType(gemma_norm_forward, m)
            patched.append(cls)
        elif cls.endswith("RotaryEmbedding") and hasattr(m, "inv_freq"):
            m.forward = types.MethodType(rope_forward, m)
            patched.append(cls)
        elif cls.endswith("RotaryEmbedding") and hasattr(m, "layer_types"):
            m.forward = types.MethodType(layer_type_rope_forward, m)
            patched.append(cls)
    if not any(c.endswith("RotaryEmbedding") for c in patched) or not any(c.endswith("RMSNorm") for c in patched):
        raise RuntimeError(f"exact-f64 patch found no rotary/RMSNorm modules (patched: {sorted(set(patched))})")
    restore = None
    if getattr(cfg, "_attn_implementation", None) == "eager":  # the module looks its eager function up per call
        mod = importlib.import_module(type(model).__module__)
        if hasattr(mod, "eager_attention_forward"):
            old = mod.eager_attention_forward
            mod.eager_attention_forward = eager_attention_f64
            patched.append("eager_attention_forward")

            def restore():
                mod.eager_attention_forward = old

    return sorted(set(patched)), restore


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

    vocab = args.vocab
    eos_id = special_id(tj)
    attn = spec.get("attn", "sdpa")
    cfg = build_config(spec, args, vocab, eos_id)
    model = make_model(cfg, attn)
    model.eval()
    reinit(model, args.seed + spec["seed"])
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec["dtype"]]
    model = model.to(torch_dtype)
    model.save_pretrained(d, safe_serialization=True)
    for leftover in ("pytorch_model.bin",):
        if os.path.exists(os.path.join(d, leftover)):
            raise RuntimeError(f"{name}: save_pretrained wrote {leftover}")
    if spec.get("hub_form"):
        path = os.path.join(d, "config.json")
        with open(path, encoding="utf-8") as f:
            c = hub_form(spec["arch"], json.load(f))
        with open(path, "w", encoding="utf-8") as f:
            json.dump(c, f, indent=2, sort_keys=True)
            f.write("\n")
    # the logits are those of the files as written
    model = load_model(d, attn, torch_dtype)
    model.eval()
    mismatch = {}
    for key in ("layer_types", "rope_parameters", "sliding_window"):
        got, built = getattr(model.config, key, None), getattr(cfg, key, None)
        if got != built:
            mismatch[key] = {"reloaded": got, "built": built}
            print(f"warning: {name}: config.json reloads with {key} {got}, built with {built}", flush=True)
    cfg = model.config

    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc or default_tokenizer_config(tj, cfg.max_position_embeddings), f, ensure_ascii=False, indent=2)
        f.write("\n")

    lens = spec.get("seq_lens", [args.seq_len, args.seq_len])
    inputs, texts = fixed_inputs(os.path.join(d, "tokenizer.json"), vocab, lens)

    # float64 copy of the (possibly bf16-rounded) weights
    m64 = copy.deepcopy(model).to(torch.float64)
    native64 = run_logits(m64, inputs)
    patched, restore = [], None
    if args.exact_f64:
        patched, restore = patch_exact_f64(m64, cfg)
    try:
        exact64 = run_logits(m64, inputs)
        greedy64 = run_greedy(m64, inputs, args.steps)
    finally:
        if restore:
            restore()
    diff = max_abs_diff(native64, exact64)
    # (a bf16 model's rotary inv_freq buffer was itself rounded to bf16, so its own float64 run
    # differs from the exact one by more; the check only holds for f32 models)
    if diff > 1e-4 and model.dtype != torch.bfloat16:
        raise RuntimeError(f"{name}: patched float64 logits differ from transformers' own by {diff} (patch is wrong)")

    meta = {
        "model": name,
        "architecture": spec["arch"],
        "weights_dtype": spec["dtype"],
        "inputs": inputs,
        "texts": texts,
        "transformers_version": versions["transformers"],
        "torch_version": versions["torch"],
        "seed": args.seed,
        "attn_implementation": attn,
        "exact_f64": bool(args.exact_f64),
        "patched_modules": patched,
        "hf_native_max_abs_diff": diff,
        "note": "logits[i][p] = next-token logits after inputs[i][0..p]; greedy = argmax continuation",
    }
    if spec.get("max_context"):
        meta["max_context"] = spec["max_context"]
    if mismatch:
        meta["reload_mismatch"] = mismatch
    if spec.get("hub_form"):
        meta["config_form"] = "rewritten as the Hub's checkpoints have it (transformers v4 fields)"
    fields = {}
    if spec["dtype"] == "float32":
        meta["dtype"] = "float64"
        meta["greedy"] = greedy64
        fields["logits"] = (exact64, args.digits)
    else:
        lowp = run_logits(model, inputs)  # HF's own bf16 CPU forward
        greedy_low = run_greedy(model, inputs, args.steps)
        meta["dtype"] = spec["dtype"]
        meta["greedy"] = greedy_low
        meta["greedy_f64"] = greedy64
        fields["logits"] = (lowp, 6)  # bf16 values need few digits
        fields["logits_f64"] = (exact64, args.digits)
    write_logits_file(os.path.join(d, "logits.json"), meta, fields)
    sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
    print(f"{name}: {sum(sizes.values())} bytes, hf_native_max_abs_diff={diff:.3g}, greedy={meta['greedy']}", flush=True)
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
    inputs, texts = fixed_inputs(os.path.join(tmp, "tokenizer.json"), args.vocab, (args.seq_len, 40))
    assert [len(s) for s in inputs] == [args.seq_len, 40]
    assert all(0 <= i < args.vocab for s in inputs for i in s)
    write_logits_file(
        os.path.join(tmp, "logits.json"),
        {"inputs": inputs, "texts": texts},
        {"logits": ([[[0.1, -2.5e-7, 3.0]] * 2] * 2, args.digits)},
    )
    with open(os.path.join(tmp, "logits.json")) as f:
        j = json.load(f)
    assert j["logits"][1][1][1] == -2.5e-7
    assert sliding_pattern(["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]) == 3
    g = hub_form("gemma3", {
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    })
    assert g == {"rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "sliding_window_pattern": 2}, g
    ph = hub_form("phi3", {"rope_parameters": {
        "rope_type": "longrope", "type": "longrope", "short_factor": [1], "long_factor": [2], "rope_theta": 1e4,
        "partial_rotary_factor": 0.5, "original_max_position_embeddings": 32,
    }})
    assert ph == {"rope_theta": 1e4, "partial_rotary_factor": 0.5, "original_max_position_embeddings": 32,
                  "rope_scaling": {"type": "longrope", "short_factor": [1], "long_factor": [2]}}, ph
    q = hub_form("qwen2", {"use_sliding_window": True, "max_window_layers": 1, "layer_types": ["full_attention", "sliding_attention"]})
    assert "layer_types" not in q
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

    path = os.path.join(args.out, "manifest.json")
    manifest = {"versions": versions, "vocab": args.vocab, "seed": args.seed, "models": {}}
    if os.path.isfile(path):  # models built before keep their entries (and the versions they were built with)
        with open(path, encoding="utf-8") as f:
            manifest["models"] = json.load(f).get("models", {})
    failed = []
    for name in sorted(MODELS):
        if args.only and name not in args.only:
            continue
        try:
            sizes = build_one(name, MODELS[name], args, tj, tc, args.out, versions)
        except Exception:  # the others still get built; the run fails at the end
            traceback.print_exc()
            failed.append(name)
            continue
        spec = {k: v for k, v in MODELS[name].items() if k != "config"}
        manifest["models"][name] = {"files": sizes, "versions": versions, "spec": {**spec, **MODELS[name]["config"]}}
    total = sum(sum(m["files"].values()) for m in manifest["models"].values())
    manifest["total_bytes"] = total
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"total {total} bytes in {args.out}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")

if __name__ == "__main__":
    main()
