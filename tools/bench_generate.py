"""Generation speed with and without the KV cache (issue 4, item 8).

    python tools/bench_generate.py                       # m3_medium shape, vocab 32000, 256 new tokens
    python tools/bench_generate.py --vocab 4096 --prompt-len 256 --threads 1 --json

Builds a randomly initialised `DecoderModel` of the `m3_medium` shape (hidden 384, intermediate 1536,
6 layers, 6 heads, 512 positions, silu, bias; vocabulary 32,000 unless --vocab), then generates
`--new-tokens` tokens greedily (batch 1, fp32, no stop at EOS) after a random prompt of
`--prompt-len` tokens, once with the KV cache and once without, through
`transformer_nb.generate.generate_ids` (the loop `tnb generate` uses). Prints tokens/s for both and their
ratio, and checks that both produced the same tokens. Each mode is timed `--repeat` times after a short
warm-up; the best run is reported (the least disturbed by other processes).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from transformer_nb.config import ModelConfig
from transformer_nb.generate import generate_ids
from transformer_nb.model import DecoderModel

M3_MEDIUM = dict(hidden_size=384, intermediate_size=1536, num_layers=6, num_attention_heads=6,
                 num_key_value_heads=None, max_position_embeddings=512, attn_dropout=0.0, residual_dropout=0.0,
                 rope_mode=None, rope_theta=None, norm='rmsnorm', activation='silu', bias=True,
                 tie_embeddings=True, rotary_dim=None, rope_scale=1.0, norm_eps=1e-5)


def model_config(**overrides) -> ModelConfig:
    "The m3_medium ModelConfig, with `overrides`."
    return ModelConfig(**{**M3_MEDIUM, **overrides})


def time_generation(model, prompt, new_tokens, use_kv_cache, repeat):
    "Best wall time (s) over `repeat` runs and the tokens of the last run."
    generate_ids(model, [prompt], min(8, new_tokens), temperature=0, use_kv_cache=use_kv_cache)   # warm-up
    best, out = float('inf'), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = generate_ids(model, [prompt], new_tokens, temperature=0, use_kv_cache=use_kv_cache, eos_id=None)
        best = min(best, time.perf_counter() - t0)
    return best, out[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--new-tokens', type=int, default=256)
    ap.add_argument('--prompt-len', type=int, default=16)
    ap.add_argument('--vocab', type=int, default=32000)
    ap.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch default)')
    ap.add_argument('--repeat', type=int, default=1)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--json', action='store_true', help='print one JSON object instead of text')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    if a.prompt_len + a.new_tokens > M3_MEDIUM['max_position_embeddings']:
        print(f"note: {a.prompt_len} + {a.new_tokens} tokens exceed the 512-position context; "
              "the cached run slides a window past it", file=sys.stderr)
    torch.manual_seed(a.seed)
    model = DecoderModel(model_config(), a.vocab).to(a.device).eval()
    prompt = torch.randint(0, a.vocab, (a.prompt_len,), generator=torch.Generator().manual_seed(a.seed)).tolist()
    t_cache, tok_cache = time_generation(model, prompt, a.new_tokens, True, a.repeat)
    t_full, tok_full = time_generation(model, prompt, a.new_tokens, False, a.repeat)
    res = dict(shape='m3_medium', parameters=model.num_parameters(), vocab=a.vocab, prompt_len=a.prompt_len,
               new_tokens=a.new_tokens, batch=1, dtype='float32', device=a.device, threads=torch.get_num_threads(),
               tokens_per_s_kv_cache=round(a.new_tokens / t_cache, 2),
               tokens_per_s_no_cache=round(a.new_tokens / t_full, 2),
               speedup=round(t_full / t_cache, 2), same_tokens=tok_cache == tok_full,
               torch=torch.__version__, cpu=platform.processor() or platform.machine())
    if a.json:
        print(json.dumps(res))
    else:
        print(f"m3_medium, {res['parameters']:,} parameters, vocab {a.vocab}, prompt {a.prompt_len} + "
              f"{a.new_tokens} new tokens, batch 1, fp32, {a.device}, {res['threads']} threads")
        print(f"  with KV cache    {res['tokens_per_s_kv_cache']:8.1f} tokens/s  ({t_cache:.2f} s)")
        print(f"  without KV cache {res['tokens_per_s_no_cache']:8.1f} tokens/s  ({t_full:.2f} s)")
        print(f"  speed-up         {res['speedup']:8.1f}x   (same tokens: {res['same_tokens']})")
    return res


if __name__ == '__main__':
    main()
