"""RoPE checks that do not fit a notebook: a real Inductor compile, property tests over many shapes,
and agreement with Hugging Face Llama's rotary embedding (the layout our HF export relies on)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from transformer_nb.rope import RopeScaling, RotaryEmbedding, rope_from_config


def reference(x, positions, rotary_dim, theta=10000.0):
    "RoPE by complex multiplication in float64; pairs (i, i + rotary_dim/2); tail unchanged."
    x = x.double()
    h = rotary_dim // 2
    z = torch.complex(x[..., :h], x[..., h:rotary_dim])
    freqs = theta ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    z = z * torch.exp(1j * torch.outer(positions.double(), freqs))
    return torch.cat((z.real, z.imag, x[..., rotary_dim:]), dim=-1)


@settings(max_examples=60, deadline=None)
@given(half=st.integers(1, 16), extra=st.integers(0, 8), heads=st.integers(1, 3), kv=st.integers(1, 3),
       T=st.integers(1, 20), offset=st.integers(0, 300), theta=st.sampled_from([100.0, 10000.0, 5e5]),
       mode=st.sampled_from([None, 'pi', 'ntk']), factor=st.floats(1.0, 8.0), seed=st.integers(0, 99))
def test_matches_complex_reference(half, extra, heads, kv, T, offset, theta, mode, factor, seed):
    rd = 2 * half
    if mode == 'ntk' and rd < 4: rd = 4
    hd = rd + 2 * extra
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, heads, T, hd, generator=g), torch.randn(2, kv, T, hd, generator=g)
    scaling = None if mode is None else RopeScaling(mode, factor)
    rope = RotaryEmbedding(hd, theta=theta, rotary_dim=rd, scaling=scaling)
    q2, k2 = rope(q, k, offset=offset)
    pos = torch.arange(offset, offset + T, dtype=torch.float64)
    th = theta
    if mode == 'pi': pos = pos / factor
    if mode == 'ntk': th = theta * factor ** (rd / (rd - 2))
    torch.testing.assert_close(q2, reference(q, pos, rd, th).float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(k2, reference(k, pos, rd, th).float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('scaling', [None, {'rope_type': 'linear', 'factor': 4.0}])
def test_matches_hf_llama(scaling):
    transformers = pytest.importorskip('transformers')
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    cfg = transformers.LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                                   rope_theta=10000.0, rope_scaling=scaling, max_position_embeddings=256)
    hf = LlamaRotaryEmbedding(cfg)
    T, off = 11, 37
    q, k = torch.randn(2, 4, T, 32), torch.randn(2, 2, T, 32)
    cos, sin = hf(q, torch.arange(off, off + T)[None].expand(2, T))
    hq, hk = apply_rotary_pos_emb(q, k, cos, sin)
    ours = RotaryEmbedding(32, scaling=None if scaling is None else RopeScaling('pi', scaling['factor']))
    oq, ok = ours(q, k, offset=off)
    torch.testing.assert_close(oq, hq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ok, hk, atol=1e-5, rtol=1e-5)


def test_inductor_compile_decoding():
    "A real torch.compile (Inductor): prefill then token-by-token decoding equals eager; no graph break."
    torch._dynamo.reset()
    rope = RotaryEmbedding(32, rotary_dim=16)
    eager = RotaryEmbedding(32, rotary_dim=16)
    q, k = torch.randn(1, 4, 24, 32), torch.randn(1, 2, 24, 32)
    step = torch.compile(rope, fullgraph=True)
    qp, kp = step(q[:, :, :8], k[:, :, :8], 0)          # prefill (builds the cache)
    torch.testing.assert_close(qp, eager(q[:, :, :8], k[:, :, :8])[0])
    for pos in range(8, 24):                             # grows the cache once (8 -> 16 -> 32)
        qs, ks = step(q[:, :, pos:pos + 1], k[:, :, pos:pos + 1], pos)
        eq, ek = eager(q[:, :, pos:pos + 1], k[:, :, pos:pos + 1], offset=pos)
        torch.testing.assert_close(qs, eq); torch.testing.assert_close(ks, ek)
    assert rope.cached_length >= 24
    torch._dynamo.reset()


def test_from_config_reads_only_attributes():
    from types import SimpleNamespace
    r = rope_from_config(SimpleNamespace(hidden_size=384, num_attention_heads=6, num_key_value_heads=2,
                                         rotary_dim=32, rope_theta=None, rope_mode='pi', rope_scale=4.0))
    assert (r.head_dim, r.rotary_dim, r.theta, r.scaling) == (64, 32, 10000.0, RopeScaling('pi', 4.0))
    try:
        from transformer_nb.config import ModelConfig
    except ImportError:
        return
    r = rope_from_config(ModelConfig())
    assert r.head_dim == ModelConfig().hidden_size // ModelConfig().num_attention_heads and r.scaling is None


def test_cos_sin_device_without_index_is_a_hit():
    "'cpu:0' (or 'cuda' on a GPU) names the cache's device: no rebuild on every call."
    devices = ['cpu:0'] + (['cuda', 'cuda:0'] if torch.cuda.is_available() else [])
    for dev in devices:
        r = RotaryEmbedding(16)
        for _ in range(3): cos, _ = r.cos_sin(8, device=dev)
        assert r.stats == {'hits': 2, 'misses': 1, 'rebuilds': 0}, (dev, r.stats)
        assert cos.device == torch.empty(0, device=dev).device
