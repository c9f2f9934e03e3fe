"""Model, attention and generation checks that a notebook can't hold well: the benchmark script as a
command, property-based mask checks, generation under autocast."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from transformer_nb.attention import CausalSelfAttention, KVCache, make_attention_mask
from transformer_nb.config import ModelConfig
from transformer_nb.generate import GenerationError, generate, generate_ids
from transformer_nb.model import DecoderModel
from transformer_nb.rope import rope_from_config

ROOT = Path(__file__).resolve().parent.parent


def tiny_cfg(**kw):
    return ModelConfig(**{**dict(hidden_size=32, intermediate_size=64, num_layers=2, num_attention_heads=4,
                                 max_position_embeddings=48), **kw})


def test_bench_generate_runs():
    out = subprocess.run([sys.executable, str(ROOT / 'tools' / 'bench_generate.py'), '--new-tokens', '6',
                          '--prompt-len', '4', '--vocab', '512', '--threads', '1', '--json'],
                         capture_output=True, text=True, check=True, timeout=300)
    res = json.loads(out.stdout)
    assert res['same_tokens'] and res['new_tokens'] == 6 and res['vocab'] == 512
    assert res['tokens_per_s_kv_cache'] > 0 and res['tokens_per_s_no_cache'] > 0


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 9), kv=st.sampled_from([1, 2, 4]), data=st.data())
def test_sdpa_matches_reference_with_random_left_padding(B, T, kv, data):
    torch.manual_seed(0)
    cfg = tiny_cfg(num_key_value_heads=kv)
    attn, rope = CausalSelfAttention(cfg).eval(), rope_from_config(cfg)
    pads = data.draw(st.lists(st.integers(0, T - 1), min_size=B, max_size=B))
    mask = torch.ones(B, T, dtype=torch.long)
    for r, p in enumerate(pads): mask[r, :p] = 0
    x = torch.randn(B, T, 32)
    with torch.no_grad():
        a = attn(x, rope, attention_mask=mask)
        attn.attention_impl = 'reference'
        b = attn(x, rope, attention_mask=mask)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    m = make_attention_mask(T, T, mask)
    assert m.any(-1).all()                                         # no fully masked row


def test_generate_under_bf16_autocast():
    torch.manual_seed(0)
    model = DecoderModel(tiny_cfg(), 64).eval()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = generate_ids(model, [[1, 2, 3], [4]], 10, temperature=0)
        cache = model.new_kv_cache(1, 8)
    assert [len(o) for o in out] == [10, 10]
    assert cache.dtype == torch.bfloat16


def test_generate_rejects_bad_settings_before_running():
    model = DecoderModel(tiny_cfg(), 64)
    with pytest.raises(GenerationError, match='top_p'):
        generate_ids(model, [[1]], 4, top_p=1.5)
    with pytest.raises(GenerationError, match='every prompt needs a token'):
        generate_ids(model, [[]], 4)


def test_kv_cache_reset_reuses_buffers():
    torch.manual_seed(0)
    model = DecoderModel(tiny_cfg(), 64).eval()
    ids = torch.randint(0, 64, (1, 10))
    cache = model.new_kv_cache(1, 16)
    with torch.no_grad():
        first = model(ids, kv_cache=cache)
        cache.reset()
        again = model(ids, kv_cache=cache)
    assert cache.length == 10
    torch.testing.assert_close(first, again)


# ---- the training-recipe switches (issue 14): off by default, old checkpoints unchanged ------------------

def test_default_config_state_dict_is_unchanged():
    "The recipe switches add no tensors unless turned on: a default-config model has exactly the keys it always had."
    m = DecoderModel(tiny_cfg(), 100)
    per_layer = ['norm1.weight', 'attn.qkv.weight', 'attn.o_proj.weight', 'norm2.weight', 'mlp.gate.weight', 'mlp.up.weight',
                 'mlp.down.weight']
    assert list(m.state_dict()) == ['embed_tokens.weight'] + [f'layers.{i}.{k}' for i in range(2) for k in per_layer] + ['norm.weight']
    c = ModelConfig()
    assert (c.qk_norm, c.zero_init_output, c.logit_softcap, c.activation) == (False, False, None, 'swiglu')
    torch.manual_seed(0); a = DecoderModel(tiny_cfg(), 100)
    torch.manual_seed(0); b = DecoderModel(tiny_cfg(qk_norm=False, zero_init_output=False, logit_softcap=None), 100)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))   # same init too


def test_recipe_switches_change_what_they_say():
    ids = torch.randint(0, 100, (2, 12))
    q = DecoderModel(tiny_cfg(qk_norm=True), 100)
    assert {'layers.0.attn.q_norm.weight', 'layers.1.attn.k_norm.weight'} <= set(q.state_dict())
    r = DecoderModel(tiny_cfg(activation='relu2'), 100)
    assert not any('gate' in k for k in r.state_dict())
    h = r.layers[0].mlp
    x = torch.randn(3, 32)
    assert torch.allclose(h(x), h.down(torch.relu(h.up(x)) ** 2), atol=1e-6)
    z = DecoderModel(tiny_cfg(zero_init_output=True), 100)
    assert all(float(blk.attn.o_proj.weight.abs().max()) == 0 and float(blk.mlp.down.weight.abs().max()) == 0 for blk in z.layers)
    s = DecoderModel(tiny_cfg(logit_softcap=0.5), 100)
    with torch.no_grad(): s.embed_tokens.weight.mul_(100)
    assert float(s(ids).abs().max()) <= 0.5
