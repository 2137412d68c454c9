#!/usr/bin/env python3
"""The peer of `npm run bench:engine -- --backend cuda`: Hugging Face transformers on the same
weights (bf16, static KV cache, generate()'s own torch.compile of the decode step where this
transformers version does that, else eager), the same batch sizes and lengths.

    python3 scripts/gpu/hf_bench.py --model DIR [--sequences 1,8,64,256] [--prompt-tokens 512]
                                    [--gen-tokens 256] [--eager]

Prints one JSON line: {"transformers", "torch", "compiled", "results": [{"sequences",
"ttft_ms" (prefill of the whole batch + its first token), "prefill_tokens_per_s",
"decode_tokens_per_s", "decode_step_ms"}]}.
Timing: a stopping criterion stamps time.perf_counter() after every generated token (generate()
already synchronizes there to test for EOS). Each batch size first runs 3 tokens with the same
cache shape as warm-up (compilation), then the timed run.
"""
import argparse
import json
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList


class Clock(StoppingCriteria):
    def __init__(self, stop_after=None):
        self.stamps = []
        self.stop_after = stop_after

    def __call__(self, input_ids, scores, **kwargs):
        torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        done = self.stop_after is not None and len(self.stamps) >= self.stop_after
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--sequences", default="1,8,64,256")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=256)
    ap.add_argument("--eager", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    vocab = model.config.vocab_size
    compiled = not a.eager
    results = []
    for n in [int(x) for x in a.sequences.split(",")]:
        ids = torch.randint(0, vocab, (n, a.prompt_tokens), device="cuda")
        kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens,
                  do_sample=False, pad_token_id=0, cache_implementation="static")
        if not compiled:
            kw["disable_compile"] = True

        def run(stop_after=None):
            clock = Clock(stop_after)
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.generate(ids, stopping_criteria=StoppingCriteriaList([clock]), **kw)
            return t0, clock.stamps

        try:
            run(stop_after=3)
        except Exception as e:  # compile failure: fall back to eager for this and later sizes
            if not compiled:
                raise
            print(json.dumps({"warning": f"compiled generate failed ({type(e).__name__}: {e}); eager from here"}), flush=True)
            compiled = False
            kw["disable_compile"] = True
            run(stop_after=3)
        t0, st = run()
        ttft = st[0] - t0
        decode = st[-1] - st[0]
        steps = len(st) - 1
        results.append(dict(sequences=n, ttft_ms=ttft * 1e3, prefill_tokens_per_s=n * a.prompt_tokens / ttft,
                            decode_tokens_per_s=n * steps / decode, decode_step_ms=decode / steps * 1e3, compiled=compiled))
        print(json.dumps({"progress": results[-1]}), flush=True)
        del ids
        torch.cuda.empty_cache()
    print(json.dumps(dict(transformers=transformers.__version__, torch=torch.__version__, compiled=compiled, results=results)))


if __name__ == "__main__":
    main()
