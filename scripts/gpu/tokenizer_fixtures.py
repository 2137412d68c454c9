#!/usr/bin/env python3
"""Byte-exact tokenizer fixtures from Hugging Face `tokenizers` (the Rust library's Python binding).

    python3 scripts/gpu/tokenizer_fixtures.py \
        --texts test/fixtures/tokenizer/texts.json \
        --tokenizers node_modules/.cache/weft/tiktoken-tokenizers \
        --out OUT

--tokenizers is a directory holding one sub-directory per tokenizer (NAME/tokenizer.json, as written
by scripts/build-tiktoken-tokenizers.ts), or a single tokenizer.json / directory with one; it may be
given more than once. Writes OUT/expected.json (or OUT itself when it ends in .json):

    {"meta": {"source": "hf-tokenizers", ...},
     "ids":     {NAME: {TEXT_INDEX: [ids]}},          # encode(text, add_special_tokens=False)
     "ids_with_special": {NAME: {TEXT_INDEX: [ids]}}, # only where it differs from "ids"
     "decoded": {NAME: {TEXT_INDEX: str}},            # decode(ids, skip_special_tokens=False)
     "decoded_skip_special": {NAME: {TEXT_INDEX: str}}}  # decode(ids, skip_special_tokens=True)

Needs no network and no GPU; it lives under scripts/gpu/ because that machine has `tokenizers`.
"""
import argparse
import hashlib
import json
import os
import sys


def find_tokenizers(paths):
    found = {}
    for p in paths:
        if os.path.isfile(p):
            found[os.path.basename(os.path.dirname(os.path.abspath(p)))] = p
        elif os.path.isfile(os.path.join(p, "tokenizer.json")):
            found[os.path.basename(os.path.abspath(p))] = os.path.join(p, "tokenizer.json")
        elif os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                f = os.path.join(p, name, "tokenizer.json")
                if os.path.isfile(f):
                    found[name] = f
        else:
            sys.exit(f"no tokenizer.json at {p}")
    if not found:
        sys.exit("no tokenizer.json found")
    return found


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", required=True)
    ap.add_argument("--tokenizers", required=True, action="append")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import tokenizers
    from tokenizers import Tokenizer

    with open(args.texts, "rb") as f:
        raw = f.read()
    texts = json.loads(raw.decode("utf-8"))["texts"]

    out = {
        "meta": {
            "source": "hf-tokenizers",
            "tokenizers_version": tokenizers.__version__,
            "python": sys.version.split()[0],
            "texts_sha256": hashlib.sha256(raw).hexdigest(),
            "tokenizer_json_sha256": {},
            "note": "encode(text, add_special_tokens=False); decode(ids, skip_special_tokens=False|True)",
        },
        "ids": {},
        "ids_with_special": {},
        "decoded": {},
        "decoded_skip_special": {},
    }
    failures = 0
    for name, path in find_tokenizers(args.tokenizers).items():
        tok = Tokenizer.from_file(path)
        out["meta"]["tokenizer_json_sha256"][name] = sha256_file(path)
        ids_map, ws_map, dec_map, dec_skip_map = {}, {}, {}, {}
        for i, text in enumerate(texts):
            ids = tok.encode(text, add_special_tokens=False).ids
            ws = tok.encode(text, add_special_tokens=True).ids
            ids_map[str(i)] = ids
            if ws != ids:
                ws_map[str(i)] = ws
            dec = tok.decode(ids, skip_special_tokens=False)
            dec_map[str(i)] = dec
            dec_skip_map[str(i)] = tok.decode(ids, skip_special_tokens=True)
            if dec != text:
                failures += 1
                print(f"[{name}] round trip differs for text {i}: {text[:40]!r} -> {dec[:40]!r}", file=sys.stderr)
        out["ids"][name] = ids_map
        out["ids_with_special"][name] = ws_map
        out["decoded"][name] = dec_map
        out["decoded_skip_special"][name] = dec_skip_map
        print(f"{name}: {len(texts)} texts, {sum(len(v) for v in ids_map.values())} tokens ({path})")

    out_path = args.out if args.out.endswith(".json") else os.path.join(args.out, "expected.json")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out_path} (tokenizers {tokenizers.__version__}); round-trip differences: {failures}")


if __name__ == "__main__":
    main()
