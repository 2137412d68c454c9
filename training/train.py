#!/usr/bin/env python3
"""Train weft's default model: a ~4M-parameter Llama-architecture model on the King James Bible.

Runs on the GPU machine (PyTorch + transformers + tokenizers + safetensors, no network):

    cd training && PYTHONUNBUFFERED=1 python3 train.py --data data --out $OUT/default --minutes 6.5

Steps, all in this one script:
  1. Byte-level BPE tokenizer (tokenizers library: ByteLevel pre-tokenizer and decoder, GPT-2
     style, 4096 tokens incl. the special token <|endoftext|> = id 0), trained on the training
     split only; checked to round-trip arbitrary UTF-8 byte-exactly.
  2. Token streams: every chapter is "<|endoftext|>" + "Book N\\nverse\\nverse\\n...".
  3. A small sweep of training candidates (dropout, epochs, peak LR) on one fixed architecture
     (LlamaForCausalLM: RMSNorm, RoPE, GQA 4 heads / 2 kv heads, SwiGLU, tied embeddings);
     each run keeps its best weights by validation loss; the sweep is time-boxed by wall clock
     and a candidate that would not finish in the time left is skipped. The best candidate wins.
     Dropout (residual, training only) is added with forward hooks; it changes nothing in the
     saved architecture.
  4. Validation perplexity per token (f32, CPU) and a unigram baseline (add-one smoothed token
     frequencies from the training stream) on exactly the same validation targets.
  5. Export: save_pretrained (safetensors, f32) + tokenizer.json + tokenizer_config.json (with
     a chat template), reference_logits.json (f32 CPU logits for a fixed validation passage and
     a greedy continuation of a fixed prompt) and train_log.json.

Reproducibility: seeds everything from --seed; data order comes from a seeded CPU generator;
deterministic algorithms are requested (warn-only). `--only K` retrains only candidate K
(step-bounded, no wall-clock dependence), which reproduces the shipped model.
"""
import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F

T0 = time.time()
EOT = "<|endoftext|>"

# Fixed architecture: 4,000,512 parameters, 16.0 MB in f32.
ARCH = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=5,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    initializer_range=0.02,
)

# Sweep candidates, in priority order (the time box skips the tail if needed).
CANDIDATES = [
    dict(name="d0.1-e20", dropout=0.1, epochs=20, lr=2e-3),
    dict(name="d0.0-e8", dropout=0.0, epochs=8, lr=2e-3),
    dict(name="d0.2-e40", dropout=0.2, epochs=40, lr=2e-3),
    dict(name="d0.1-e40", dropout=0.1, epochs=40, lr=2e-3),
    dict(name="d0.1-e20-lr1e-3", dropout=0.1, epochs=20, lr=1e-3),
    dict(name="d0.2-e80", dropout=0.2, epochs=80, lr=2e-3),
]
SMOKE_CANDIDATES = [dict(name="smoke", dropout=0.1, epochs=0.05, lr=2e-3)]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}And one asked him, saying, {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}And he answered and said, {{ message['content'] }}\n"
    "{% else %}{{ message['content'] }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}And he answered and said,{% endif %}"
)

GREEDY_PROMPT = "In the beginning"
SAMPLE_PROMPTS = ["In the beginning", "And Jesus said unto them,", "The LORD is my shepherd;"]
CHAT_SAMPLES = ["What is love?", "How should I live?"]


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------- data + tokenizer

def read_chapters(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    blocks = [b.strip("\n") for b in text.split("\n\n")]
    return [b + "\n" for b in blocks if b]


def train_tokenizer(chapters, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(chapters, trainer=trainer)
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    assert tok.token_to_id(EOT) == 0
    return tok


def check_roundtrip(tok, texts):
    for s in texts:
        ids = tok.encode(s).ids
        back = tok.decode(ids, skip_special_tokens=False)
        if back != s:
            raise RuntimeError(f"tokenizer round-trip failed for {s[:60]!r}: got {back[:60]!r}")


def build_stream(tok, chapters):
    eot = tok.token_to_id(EOT)
    out = []
    for enc in tok.encode_batch(chapters):
        out.append(eot)
        out.extend(enc.ids)
    return torch.tensor(out, dtype=torch.long)


def token_bytes(tok):
    """Byte length of each token id (GPT-2 byte-to-unicode mapping inverted)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    u2b = {chr(c): b for b, c in zip(bs, cs)}
    lens = [0] * tok.get_vocab_size()
    for t, i in tok.get_vocab().items():
        lens[i] = 0 if t == EOT else len(t)  # every char of a byte-level token is one byte
        if t != EOT:
            assert all(ch in u2b for ch in t), t
    return torch.tensor(lens, dtype=torch.long)


# ----------------------------------------------------------------------------- model

def make_config(tok):
    from transformers import LlamaConfig

    kw = dict(ARCH)
    rope_theta = kw.pop("rope_theta")
    cfg = LlamaConfig(
        **kw,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id(EOT),
        eos_token_id=tok.token_to_id(EOT),
        pad_token_id=None,
        use_cache=False,
    )
    # transformers 5 keeps rope_theta in rope_parameters; 4.x as an attribute.
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = rope_theta
        rp.setdefault("rope_type", "default")
    else:
        cfg.rope_theta = rope_theta
    return cfg


def new_model(cfg, device):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(cfg).to(device=device, dtype=torch.float32)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    if emb.data_ptr() != head.data_ptr():
        raise RuntimeError("lm_head is not tied to embed_tokens")
    return model


def count_params(model):
    return sum(p.numel() for p in model.parameters())  # parameters() deduplicates tied weights


def add_dropout_hooks(model, p):
    if p <= 0:
        return []

    def hook(mod, inp, out):
        if not mod.training:
            return None
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, True),) + tuple(out[1:])
        return F.dropout(out, p, True)

    handles = [model.model.embed_tokens.register_forward_hook(hook)]
    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(hook))
        handles.append(layer.mlp.register_forward_hook(hook))
    return handles


def logits_of(model, x):
    return model(input_ids=x, use_cache=False).logits


@torch.no_grad()
def eval_nll(model, stream, seq, batch, device, autocast):
    """Sum of NLL (nats) and target ids over every target of `stream` exactly once:
    windows of seq+1 tokens stepping by seq, plus one shorter tail window."""
    model.eval()
    n = stream.numel()
    starts = list(range(0, n - 1, seq))
    total = 0.0
    targets = []
    full = [s for s in starts if s + seq + 1 <= n]
    tail = [s for s in starts if s + seq + 1 > n]
    for i in range(0, len(full), batch):
        idx = torch.tensor(full[i:i + batch])[:, None] + torch.arange(seq + 1)[None, :]
        chunk = stream[idx].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            lg = logits_of(model, chunk[:, :-1])
        total += F.cross_entropy(lg.float().reshape(-1, lg.size(-1)), chunk[:, 1:].reshape(-1), reduction="sum").item()
        targets.append(chunk[:, 1:].reshape(-1).cpu())
    for s in tail:
        chunk = stream[s:].to(device)[None, :]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            lg = logits_of(model, chunk[:, :-1])
        total += F.cross_entropy(lg.float().reshape(-1, lg.size(-1)), chunk[:, 1:].reshape(-1), reduction="sum").item()
        targets.append(chunk[:, 1:].reshape(-1).cpu())
    targets = torch.cat(targets)
    assert targets.numel() == n - 1
    return total, targets


def lr_at(step, total, warmup, peak):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def train_candidate(cand, cfg, train_stream, valid_stream, args, device, deadline, step_time_hint):
    """Returns a dict with the best validation loss, its weights (CPU) and the curve."""
    torch.manual_seed(args.seed)
    model = new_model(cfg, device)
    handles = add_dropout_hooks(model, cand["dropout"])
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cand["lr"], betas=(0.9, 0.95), eps=1e-8, fused=(device.type == "cuda"),
    )
    B, T = args.batch, args.seq
    steps_per_epoch = max(1, train_stream.numel() // (B * T))
    total_steps = max(2, int(round(cand["epochs"] * steps_per_epoch)))
    warmup = max(1, min(200, total_steps // 10))
    eval_every = max(1, min(args.eval_every, total_steps // 4))
    log_every = max(1, min(args.log_every, total_steps // 4))
    gen = torch.Generator().manual_seed(args.seed + 1)
    stream_dev = train_stream.to(device)
    ar = torch.arange(T + 1, device=device)
    n_valid_targets = valid_stream.numel() - 1
    curve, train_curve = [], []
    best = dict(val_loss=float("inf"), step=-1, state=None)
    t_start = time.time()
    stopped = "steps"
    log(f"candidate {cand['name']}: {total_steps} steps ({cand['epochs']} epochs x {steps_per_epoch}), "
        f"warmup {warmup}, eval every {eval_every}, dropout {cand['dropout']}, lr {cand['lr']}")
    model.train()
    step = 0
    for step in range(total_steps):
        if time.time() > deadline:
            stopped = "wall clock"
            break
        lr = lr_at(step, total_steps, warmup, cand["lr"])
        for g in opt.param_groups:
            g["lr"] = lr
        offs = torch.randint(0, train_stream.numel() - T - 1, (B,), generator=gen).to(device)
        chunk = stream_dev[offs[:, None] + ar[None, :]]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=(device.type == "cuda")):
            lg = logits_of(model, chunk[:, :-1])
        loss = F.cross_entropy(lg.float().reshape(-1, lg.size(-1)), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0:
            el = time.time() - t_start
            train_curve.append(dict(step=step + 1, loss=round(loss.item(), 4), lr=lr, elapsed_s=round(el, 1)))
            log(f"  {cand['name']} step {step + 1}/{total_steps} loss {loss.item():.4f} lr {lr:.2e} "
                f"{(step + 1) * B * T / el / 1e6:.2f}M tok/s")
        if (step + 1) % eval_every == 0 or step + 1 == total_steps:
            nll, _ = eval_nll(model, valid_stream, T, 64, device, device.type == "cuda")
            vl = nll / n_valid_targets
            curve.append(dict(step=step + 1, epoch=round((step + 1) / steps_per_epoch, 2), val_loss=round(vl, 4),
                              train_loss=round(loss.item(), 4)))
            mark = ""
            if vl < best["val_loss"]:
                best.update(val_loss=vl, step=step + 1,
                            state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
                mark = " *"
            log(f"  {cand['name']} step {step + 1} val loss {vl:.4f} ppl {math.exp(vl):.2f}{mark}")
            model.train()
    else:
        step = total_steps - 1
    for h in handles:
        h.remove()
    wall = time.time() - t_start
    done = step + 1 if stopped == "steps" else step
    return dict(name=cand["name"], cand=cand, best_val_loss=best["val_loss"], best_step=best["step"],
                state=best["state"], steps_done=done, total_steps=total_steps, stopped=stopped,
                wall_s=round(wall, 1), val_curve=curve, train_curve=train_curve,
                step_time_s=wall / max(1, done))


# ----------------------------------------------------------------------------- export

def f32list(t):
    return [float(v) for v in t.float().reshape(-1).tolist()]


@torch.no_grad()
def greedy(model, ids, n):
    ids = list(ids)
    out, margins = [], []
    for _ in range(n):
        lg = logits_of(model, torch.tensor([ids]))[0, -1].float()
        top2 = torch.topk(lg, 2)
        nxt = int(top2.indices[0])
        margins.append(float(top2.values[0] - top2.values[1]))
        ids.append(nxt)
        out.append(nxt)
    return out, margins


@torch.no_grad()
def sample(model, ids, n, seed, temperature=0.8, top_k=40, stop_ids=()):
    g = torch.Generator().manual_seed(seed)
    ids = list(ids)
    out = []
    for _ in range(n):
        lg = logits_of(model, torch.tensor([ids[-512:]]))[0, -1].float() / temperature
        v, ix = torch.topk(lg, top_k)
        p = torch.softmax(v, -1)
        nxt = int(ix[torch.multinomial(p, 1, generator=g)])
        ids.append(nxt)
        out.append(nxt)
        if nxt in stop_ids:
            break
    return out


def write_tokenizer_config(path, tok, max_len):
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "added_tokens_decoder": {
            str(tok.token_to_id(EOT)): {
                "content": EOT, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True,
            }
        },
        "chat_template": CHAT_TEMPLATE,
    }
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def patch_config_json(path):
    """Make config.json readable by engines that predate transformers 5's rope_parameters:
    a top-level rope_theta and rope_scaling null (plain RoPE)."""
    with open(path) as f:
        c = json.load(f)
    rp = c.get("rope_parameters") or {}
    theta = rp.get("rope_theta", c.get("rope_theta", ARCH["rope_theta"]))
    rtype = rp.get("rope_type", "default")
    if rtype != "default":
        raise RuntimeError(f"unexpected rope_type {rtype}")
    rs = c.get("rope_scaling")
    if isinstance(rs, dict) and (rs.get("rope_type") or rs.get("type")) not in (None, "default"):
        raise RuntimeError(f"unexpected rope_scaling {rs}")
    c["rope_theta"] = float(theta)
    c["rope_scaling"] = None
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=6.5, help="wall-clock box for the training sweep")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--only", type=int, default=None, help="train only candidate K (0-based)")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end check")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import tokenizers
    import transformers
    import safetensors

    versions = dict(python=sys.version.split()[0], torch=torch.__version__, transformers=transformers.__version__,
                    tokenizers=tokenizers.__version__, safetensors=safetensors.__version__)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    log(f"device {gpu}; {versions}")
    os.makedirs(args.out, exist_ok=True)
    trainlog = dict(command=" ".join([os.path.basename(sys.executable)] + sys.argv), seed=args.seed,
                    versions=versions, device=gpu, arch=ARCH, args=vars(args), errors=[])

    def save_log():
        trainlog["wall_time_s"] = round(time.time() - T0, 1)
        with open(os.path.join(args.out, "train_log.json"), "w") as f:
            json.dump(trainlog, f, indent=1)
            f.write("\n")

    # --- data + tokenizer
    train_ch = read_chapters(os.path.join(args.data, "kjv-train.txt"))
    valid_ch = read_chapters(os.path.join(args.data, "kjv-valid.txt"))
    log(f"chapters: train {len(train_ch)}, valid {len(valid_ch)}")
    tok = train_tokenizer(train_ch, ARCH["vocab_size"])
    check_roundtrip(tok, ["".join(valid_ch[:3]), "héllo wörld — 世界 🙂\n\t\r\x00 ﬁ <b>", "  two  spaces\n\n", EOT + "x"])
    tok_tmp = os.path.join(args.out, "tokenizer.json")
    tok.save(tok_tmp)
    from tokenizers import Tokenizer
    check_roundtrip(Tokenizer.from_file(tok_tmp), ["".join(valid_ch[3:5]), "ünïcödé ✓ \U0001F600"])
    train_stream = build_stream(tok, train_ch)
    valid_stream = build_stream(tok, valid_ch)
    tb = token_bytes(tok)
    log(f"tokens: train {train_stream.numel()}, valid {valid_stream.numel()}; "
        f"bytes/token {tb[train_stream].sum().item() / train_stream.numel():.3f}")
    trainlog["tokens"] = dict(train=train_stream.numel(), valid=valid_stream.numel(),
                              tokenizer_sha256=sha256_file(tok_tmp))

    # --- unigram baseline on the validation targets
    counts = torch.bincount(train_stream, minlength=ARCH["vocab_size"]).double() + 1.0
    logp = torch.log(counts / counts.sum())
    vt = valid_stream[1:]
    uni_nll = -logp[vt].sum().item()
    uni_ppl = math.exp(uni_nll / vt.numel())
    val_bytes = tb[vt].sum().item()
    log(f"unigram baseline: val ppl {uni_ppl:.2f} ({uni_nll / math.log(2) / val_bytes:.3f} bits/byte)")
    trainlog["unigram"] = dict(val_ppl=uni_ppl, val_bits_per_byte=uni_nll / math.log(2) / val_bytes)

    # --- sweep
    cfg = make_config(tok)
    cands = SMOKE_CANDIDATES if args.smoke else CANDIDATES
    if args.only is not None:
        cands = [cands[args.only]]
    deadline = T0 + args.minutes * 60.0
    results = []
    step_time = None
    for cand in cands:
        steps_per_epoch = max(1, train_stream.numel() // (args.batch * args.seq))
        need = cand["epochs"] * steps_per_epoch * (step_time or 0) * 1.15
        if results and time.time() + need > deadline:
            log(f"skip {cand['name']}: needs ~{need:.0f}s, {deadline - time.time():.0f}s left")
            results.append(dict(name=cand["name"], cand=cand, skipped=True))
            continue
        r = train_candidate(cand, cfg, train_stream, valid_stream, args, device,
                            deadline if args.only is None else float("inf"), step_time)
        step_time = r["step_time_s"]
        results.append(r)
        log(f"candidate {r['name']}: best val loss {r['best_val_loss']:.4f} (ppl {math.exp(r['best_val_loss']):.2f}) "
            f"at step {r['best_step']}/{r['total_steps']}, stopped by {r['stopped']}, {r['wall_s']}s")
        trainlog["sweep"] = [{k: v for k, v in x.items() if k != "state"} for x in results]
        save_log()
    done = [r for r in results if not r.get("skipped") and r["state"] is not None]
    win = min(done, key=lambda r: r["best_val_loss"])
    log(f"winner: {win['name']} (val loss {win['best_val_loss']:.4f})")
    trainlog["winner"] = win["name"]
    trainlog["winner_index"] = [c["name"] for c in (SMOKE_CANDIDATES if args.smoke else CANDIDATES)].index(win["name"])
    trainlog["loss_curve"] = dict(val=win["val_curve"], train=win["train_curve"])

    # --- final model in f32 on CPU
    model = new_model(cfg, torch.device("cpu"))
    model.load_state_dict(win["state"])
    model.eval()
    n_params = count_params(model)
    trainlog["params"] = n_params
    log(f"params {n_params}")

    # save first, so the weights come back whatever fails later
    tmp = tempfile.mkdtemp(prefix="weft-save-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    except TypeError:  # transformers 5 removed the argument (safetensors is the only format)
        model.save_pretrained(tmp)
    log(f"save_pretrained wrote {sorted(os.listdir(tmp))}")
    cjson = patch_config_json(os.path.join(tmp, "config.json"))
    from safetensors import safe_open
    from safetensors.torch import save_file
    st = os.path.join(tmp, "model.safetensors")
    with safe_open(st, "pt") as f:
        keys = list(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys}
    if "lm_head.weight" in keys or dtypes != {torch.float32}:
        log(f"rewriting safetensors (keys had lm_head: {'lm_head.weight' in keys}, dtypes {dtypes})")
        sd = {k: v.float().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(sd, st, metadata={"format": "pt"})
        with safe_open(st, "pt") as f:
            keys = list(f.keys())
    log(f"safetensors: {len(keys)} tensors, {os.path.getsize(st)} bytes")
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(os.path.join(tmp, name), os.path.join(args.out, name))
    write_tokenizer_config(os.path.join(args.out, "tokenizer_config.json"), tok, ARCH["max_position_embeddings"])
    trainlog["config_json"] = cjson
    save_log()

    # --- final validation perplexity, f32 on CPU
    try:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        nll, _ = eval_nll(model, valid_stream, args.seq, 8, torch.device("cpu"), False)
        vl = nll / (valid_stream.numel() - 1)
        trainlog["val"] = dict(loss=vl, ppl=math.exp(vl), bits_per_byte=nll / math.log(2) / val_bytes,
                               targets=valid_stream.numel() - 1, unigram_ppl=uni_ppl,
                               ratio_unigram_over_model=uni_ppl / math.exp(vl))
        log(f"VALIDATION (f32 CPU): loss {vl:.4f} ppl {math.exp(vl):.2f} vs unigram {uni_ppl:.2f}; "
            f"{nll / math.log(2) / val_bytes:.3f} bits/byte")
    except Exception:
        trainlog["errors"].append(traceback.format_exc())
        traceback.print_exc()
    save_log()

    # --- reload check: what was saved gives the same logits
    passage_ids = tok.encode(valid_ch[0]).ids[:32]
    x = torch.tensor([passage_ids])
    with torch.no_grad():
        ref = logits_of(model, x)[0].float()
    try:
        from transformers import LlamaForCausalLM
        try:
            m2 = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32)
        except TypeError:
            m2 = LlamaForCausalLM.from_pretrained(args.out, torch_dtype=torch.float32)
        m2.eval()
        with torch.no_grad():
            d = (logits_of(m2, x)[0].float() - ref).abs().max().item()
        trainlog["reload_max_abs_diff"] = d
        log(f"reload check: max |logit diff| {d:.3g}")
        if d > 1e-5:
            raise RuntimeError(f"reloaded model differs: {d}")
    except Exception:
        trainlog["errors"].append(traceback.format_exc())
        traceback.print_exc()

    # --- reference logits + greedy continuation
    try:
        top = torch.topk(ref, 5, dim=-1)
        prompt_ids = tok.encode(GREEDY_PROMPT).ids
        g_ids, margins = greedy(model, prompt_ids, 32)
        reference = {
            "about": "PyTorch f32 CPU logits of models/default for a fixed validation passage, and a greedy "
                     "continuation of a fixed prompt (no BOS token is prepended to either).",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "passage": {
                "text": tok.decode(passage_ids),
                "ids": passage_ids,
                "last_positions": list(range(len(passage_ids) - 4, len(passage_ids))),
                "last_logits": [f32list(ref[i]) for i in range(len(passage_ids) - 4, len(passage_ids))],
                "top5_ids": top.indices.tolist(),
                "top5_logits": [f32list(r) for r in top.values],
            },
            "greedy": {
                "prompt": GREEDY_PROMPT,
                "prompt_ids": prompt_ids,
                "new_tokens": 32,
                "ids": g_ids,
                "text": tok.decode(g_ids),
                "min_top1_top2_margin": min(margins),
            },
        }
        with open(os.path.join(args.out, "reference_logits.json"), "w") as f:
            json.dump(reference, f)
            f.write("\n")
        trainlog["greedy"] = reference["greedy"]
        log(f"greedy: {GREEDY_PROMPT!r} -> {reference['greedy']['text']!r} (min margin {min(margins):.3f})")
    except Exception:
        trainlog["errors"].append(traceback.format_exc())
        traceback.print_exc()
    save_log()

    # --- samples for the model card
    try:
        nl = [i for t, i in tok.get_vocab().items() if "Ċ" in t]  # any token containing a newline
        samples = []
        for k, p in enumerate(SAMPLE_PROMPTS):
            ids = sample(model, tok.encode(p).ids, 80, seed=args.seed + k)
            samples.append(dict(prompt=p, text=tok.decode(ids), temperature=0.8, top_k=40, seed=args.seed + k))
            log(f"sample {p!r} -> {samples[-1]['text']!r}")
        chats = []
        import jinja2
        # the settings transformers' apply_chat_template uses
        tmpl = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE)
        for k, q in enumerate(CHAT_SAMPLES):
            prompt = tmpl.render(messages=[{"role": "user", "content": q}], add_generation_prompt=True, bos_token=EOT)
            pids = tok.encode(prompt).ids
            gi, _ = greedy(model, pids, 48)
            cut = next((j + 1 for j, t in enumerate(gi) if t in nl or t == 0), len(gi))
            si = sample(model, pids, 80, seed=args.seed + 100 + k, stop_ids=set(nl) | {0})
            chats.append(dict(user=q, prompt=prompt, greedy=tok.decode(gi[:cut]), sampled=tok.decode(si)))
            log(f"chat {q!r} -> greedy {chats[-1]['greedy']!r} | sampled {chats[-1]['sampled']!r}")
        trainlog["samples"] = samples
        trainlog["chat_samples"] = chats
        try:  # the template through transformers, as a consumer would use it
            from transformers import AutoTokenizer
            ht = AutoTokenizer.from_pretrained(args.out)
            msgs = [{"role": "user", "content": CHAT_SAMPLES[0]}]
            s = ht.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            trainlog["hf_chat_template_matches"] = (s == chats[0]["prompt"])
            log(f"AutoTokenizer chat template matches jinja2 render: {s == chats[0]['prompt']}")
        except Exception:
            trainlog["errors"].append(traceback.format_exc())
            traceback.print_exc()
    except Exception:
        trainlog["errors"].append(traceback.format_exc())
        traceback.print_exc()
    shutil.rmtree(tmp, ignore_errors=True)
    save_log()
    for r in results:
        if r.get("skipped"):
            log(f"SWEEP {r['name']:>18}: skipped (time box)")
        else:
            log(f"SWEEP {r['name']:>18}: best val loss {r['best_val_loss']:.4f} at step {r['best_step']}/"
                f"{r['total_steps']} ({r['steps_done']} run, {r['stopped']}, {r['wall_s']}s)")
    log(f"files: {sorted(os.listdir(args.out))}; errors: {len(trainlog['errors'])}")
    if args.smoke and trainlog["errors"]:
        sys.exit("smoke run recorded errors")


if __name__ == "__main__":
    main()
