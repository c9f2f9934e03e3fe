"""Decoding on the CPU: the compiled path compiles once for prompts of any length; streaming text out of the
tokenizer takes constant work per token; a prompt that cannot be tokenized is one clear error. Tiny models."""
import time
import warnings

import pytest
import torch

from transformer_nb.config import ModelConfig
from transformer_nb.generate import GenerationError, IncrementalDecoder, cache_bucket, generate, generate_ids
from transformer_nb.model import DecoderModel
from transformer_nb.tokenizer import train_bbpe

ASCII_TEXT = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n" * 20


@pytest.fixture(scope='module')
def ascii_tok(tmp_path_factory):
    """A byte-level BPE trained on ASCII only: every other character comes out as one token per byte."""
    d = tmp_path_factory.mktemp('dec')
    (d / 'c.txt').write_text(ASCII_TEXT)
    return train_bbpe([d / 'c.txt'], d / 'tok', vocab_size=300, show_progress=False)


def tiny_model(ctx=64, vocab=50):
    torch.manual_seed(0)
    m = DecoderModel(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=ctx), vocab_size=vocab).eval()
    m.reset_parameters(std=0.3)       # larger weights than at init: the greedy choices vary from token to token
    return m


# ---------------------------------------------------------------------------------------------
# Compiled decoding: one graph for prompts of any length.

def test_cache_bucket():
    assert [cache_bucket(n, 2048) for n in (1, 17, 256, 257, 600, 1025, 5000)] == [256, 256, 256, 512, 1024, 2048,
                                                                                      2048]
    assert cache_bucket(40, 64) == 64 and cache_bucket(5, 1024, smallest=8) == 8


def test_compiled_generate_compiles_once_for_ten_prompt_lengths():
    """Ten prompts of different lengths through `compile=True` in one process: at most two graphs (here: one, the
    decoding step; the prefill is eager), no recompile-limit error, and the uncompiled greedy tokens."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for k in range(10):
            prompt = [[(7 * i + k) % 50 for i in range(3 * k + 1)]]
            got = generate_ids(model, prompt, 8, temperature=0, compile=True)
            assert got == generate_ids(model, prompt, 8, temperature=0, use_kv_cache=False), k
    print(f"graphs compiled for ten prompt lengths: {counters['stats']['unique_graphs']}")
    assert 1 <= counters['stats']['unique_graphs'] <= 2, dict(counters['stats'])
    assert not [w for w in caught if 'recompile limit' in str(w.message)]   # no eager fallback either


def test_static_cache_reused_and_reset_between_calls():
    """A second call reuses the first call's buffers; a padded batch before a shorter prompt leaves no padding
    behind (the reused cache's mask is reset)."""
    from transformer_nb.generate import _KEPT_CACHES
    model = tiny_model()
    batch = [[5, 6, 7, 8, 9, 10, 11, 12], [3]]
    first = {}                                              # batch size -> the cache object the first call kept
    for prompts in (batch, [[4, 2]], batch, [[4, 2, 9]]):
        want = [generate_ids(model, [p], 10, temperature=0, use_kv_cache=False)[0] for p in prompts]
        assert generate_ids(model, prompts, 10, temperature=0, static_cache=True) == want
        (key, cache), = [(k, c) for k, c in _KEPT_CACHES[model].items() if k[0] == len(prompts)]
        assert first.setdefault(len(prompts), cache) is cache    # the same buffers, not a new cache each call
    kept = _KEPT_CACHES[model]
    assert sorted(k[0] for k in kept) == [1, 2] and not any(c.in_use for c in kept.values())


# ---------------------------------------------------------------------------------------------
# Streaming text out of byte-level tokens.

MULTI = "café 日本語のテキスト 🙂👩‍👩‍👧 ünïcödé, 東京! 한국어 "


def test_incremental_decoder_equals_full_decode(ascii_tok):
    ids = ascii_tok.encode(MULTI * 3).ids
    assert len(ids) > 2 * len(MULTI)                       # the non-ASCII characters really are split into bytes
    dec = IncrementalDecoder(ascii_tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert ''.join(pieces) == ascii_tok.decode(ids) == MULTI * 3
    assert not any('\ufffd' in p for p in pieces)
    # several ids at once, and a truly invalid byte at the end comes out at flush
    dec = IncrementalDecoder(ascii_tok)
    lone = ascii_tok.encode('語').ids[0]                    # the first byte of a 3-byte character
    assert dec.push(*ids[:10]) + dec.push(*ids[10:]) == MULTI * 3
    assert dec.push(lone) == '' and dec.flush() == '\ufffd' and dec.flush() == ''


def test_incremental_decoder_is_linear(ascii_tok):
    """20,000+ tokens stream in well under a second (re-decoding the whole text at every token takes tens of
    seconds), and never more than a character's bytes wait."""
    text = MULTI * 600
    ids = ascii_tok.encode(text).ids
    assert len(ids) > 20_000
    dec, held, out = IncrementalDecoder(ascii_tok), 0, []
    t0 = time.perf_counter()
    for i in ids:
        out.append(dec.push(i))
        held = max(held, len(dec.pending))
    out.append(dec.flush())
    seconds = time.perf_counter() - t0
    assert ''.join(out) == text
    assert held <= 4
    assert seconds < 3.0, f"{len(ids)} tokens took {seconds:.1f} s"


def test_generate_streams_multibyte_text(ascii_tok):
    """Streamed pieces (random weights: any bytes) add up to the returned text."""
    model = tiny_model(vocab=ascii_tok.get_vocab_size())
    pieces = []
    out = generate(model, ascii_tok, 'café 日本', max_new_tokens=40, temperature=1.0, seed=0, callback=pieces.append)
    assert len(pieces) > 1 and ''.join(pieces) == out


# ---------------------------------------------------------------------------------------------
# A lone surrogate cannot be tokenized: one clear error naming the prompt and position.

def test_generate_refuses_lone_surrogate(ascii_tok):
    model = tiny_model(vocab=ascii_tok.get_vocab_size())
    with pytest.raises(GenerationError, match=r'^prompt: character 1 is a lone surrogate U\+D800'):
        generate(model, ascii_tok, 'a\ud800b', max_new_tokens=2)
    with pytest.raises(GenerationError, match=r'^prompt 1: character 3 is a lone surrogate U\+DFFF'):
        generate(model, ascii_tok, ['fine', 'abc\udfff'], max_new_tokens=2)


def test_recompile_limit_falls_back_to_eager():
    """Past torch.compile's recompile limit (here 1: each batch size is a new graph) decoding goes on uncompiled,
    with a warning and the same tokens, instead of raising."""
    torch._dynamo.reset()
    model, before = tiny_model(), torch._dynamo.config.recompile_limit
    # torch's own patcher (pytest's monkeypatch would restore the config entry hidden: torch's config module
    # hides what is deleted, and later compiles in this process then fail to read it)
    with torch._dynamo.config.patch(recompile_limit=1):
        for prompts in ([[1, 2, 3]], [[4, 5], [6, 7, 8]]):
            want = [generate_ids(model, [p], 5, temperature=0, use_kv_cache=False)[0] for p in prompts]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                assert generate_ids(model, prompts, 5, temperature=0, compile=True) == want
            fell_back = [w for w in caught if 'recompile limit' in str(w.message)]
            assert len(fell_back) == (len(prompts) == 2)
    torch._dynamo.reset()
    assert torch._dynamo.config.recompile_limit == before      # restored


def test_incremental_decoder_survives_a_stream_error(ascii_tok):
    """Should the library's stream raise (older versions did on some decoders), the text still comes out whole."""
    class Failing:
        def step(self, tok, i): raise Exception('InvalidPrefix')
    ids = ascii_tok.encode(MULTI).ids
    dec = IncrementalDecoder(ascii_tok)
    out = [dec.push(i) for i in ids[:5]]
    dec.stream = Failing()
    out.append(dec.push(ids[5]))
    out += [dec.push(i) for i in ids[6:]] + [dec.flush()]
    assert ''.join(out) == MULTI


def test_free_static_caches():
    from transformer_nb.generate import _KEPT_CACHES, MAX_KEPT_CACHES, free_static_caches
    model = tiny_model(ctx=1024)
    for n in (1, 300, 600, 900, 1000):                # five cache lengths: 256, 512, 1024 ... at most MAX_KEPT_CACHES
        for b in (1, 2):
            generate_ids(model, [[1] * n] * b, 1, temperature=0, static_cache=True)
    assert 1 < len(_KEPT_CACHES[model]) <= MAX_KEPT_CACHES
    free_static_caches(model)
    assert model not in _KEPT_CACHES


def test_incremental_decoder_holds_no_special_tokens():
    "Special tokens add no text: none is held pending (the stream's window, and its work per token, stay small)."
    from tokenizers import pre_tokenizers, trainers
    from transformer_nb.tokenizer import new_bbpe_tokenizer
    tok = new_bbpe_tokenizer()
    tok.train_from_iterator(['hello world ab cd'] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=['<pad>', '<bos>', '<eos>'], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos, d = tok.token_to_id('<eos>'), IncrementalDecoder(tok)
    text = d.push(*tok.encode('ab').ids) + ''.join(d.push(eos) for _ in range(500))
    assert len(d.pending) == 0
    assert text + d.push(*tok.encode(' cd').ids) + d.flush() == 'ab cd'
