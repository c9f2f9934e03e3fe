"""Property and error-case tests for transformer_nb.data that a notebook can't hold.

- the chunked document scanner agrees with a naive line-by-line reference on random text, for
  every chunk size (chunk boundaries inside lines, characters, \\r\\n pairs, whitespace runs);
- corpus errors name the file, byte offset and line, also far past the first chunk;
- samplers: determinism from the seed, exact resume through a JSON round trip (also across
  epochs and across ranks), disjoint data across DDP ranks, each window once per epoch;
- prepare: multi-shard output equals single-shard output; two processes preparing the same
  cache key at once both succeed and leave one complete folder; a damaged cache is deleted only
  by the process holding the lock; the shard size is part of the cache key; a corpus that dedupe
  leaves with one document is split like that document alone.
"""
import json
import multiprocessing as mp
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from transformer_nb.config import UserError
from transformer_nb.sources import scan_file
from transformer_nb.data import (CorpusError, FileStats, RandomWindowSampler, SequentialSampler, TokenShards,
                                 _SelectionSampler, iter_documents, prepare, resolve_sources,
                                 shard_text, validate_corpus)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------------------------
# documents: chunked scanner == naive reference

def reference_documents(text: str) -> list[str]:
    "Blocks of non-blank lines, each line ending in \\n; what the docs of iter_documents promise."
    text = text.replace('\r\n', '\n')
    lines = text.split('\n')
    last = lines.pop()                        # '' when the text ends with a newline
    if last: lines.append(last)
    docs, cur = [], []
    for line in lines:
        if line.strip(): cur.append(line + '\n')
        elif cur: docs.append(''.join(cur)); cur = []
    if cur: docs.append(''.join(cur))
    return docs

def scan(path, **kw):
    "Documents (pieces joined up to each end flag) and the stats."
    stats, docs, cur = FileStats(Path(path)), [], []
    for text, end in scan_file(path, stats, **kw):
        cur.append(text)
        if end: docs.append(''.join(cur)); cur = []
    assert not cur, 'pieces after the last document end'
    return docs, stats

ALPHABET = st.sampled_from(['a', 'b', 'Z', ' ', ' ', '\t', '\n', '\n', '\n', '\r\n', '\r', 'é', '€', '😀',
                            '\x0c', '\x1c', '\u3000', '\xa0', '\x85', ' \n', '\n\n'])
TEXT = st.lists(ALPHABET, min_size=1, max_size=120).map(''.join)

@SETTINGS
@given(text=TEXT, chunk=st.integers(1, 24), max_chars=st.sampled_from([None, 1, 3, 10]))
def test_scanner_matches_reference(tmp_path, text, chunk, max_chars):
    p = tmp_path/'t.txt'
    p.write_bytes(text.encode('utf-8'))
    docs, s = scan(p, chunk_size=chunk, max_chars=max_chars)
    ref = reference_documents(text)
    assert docs == ref
    norm = text.replace('\r\n', '\n')
    assert s.documents == len(ref)
    assert s.chars == len(norm)
    assert s.lines == norm.count('\n') + (not norm.endswith('\n'))
    assert s.text_lines == sum(d.count('\n') for d in ref)
    assert s.bytes == len(text.encode('utf-8'))

@SETTINGS
@given(n_lines=st.integers(2, 30), k=st.integers(1, 29), chunk=st.integers(1, 40), indent=st.sampled_from(['', '  ']))
def test_break_after_splits_one_document(tmp_path, n_lines, k, chunk, indent):
    k = min(k, n_lines - 1)
    lines = [f'{indent}line {i}\n' for i in range(n_lines)]
    p = tmp_path/'one.txt'
    p.write_text(''.join(lines))
    docs, s = scan(p, chunk_size=chunk, break_after=k)
    assert docs == [''.join(lines[:k]), ''.join(lines[k:])]
    assert s.documents == 2

def test_iter_documents_streams_files_in_order(tmp_path):
    (tmp_path/'a.txt').write_text('one\n\ntwo')
    (tmp_path/'b.txt').write_text('\n\nthree\n  four\n')
    assert list(iter_documents(resolve_sources(tmp_path))) == ['one\n', 'two\n', 'three\n  four\n']


@SETTINGS
@given(text=TEXT, k=st.integers(1, 5))
def test_shard_text_roundtrip(tmp_path, text, k):
    src = tmp_path/'src.txt'
    src.write_bytes(text.encode())
    man = shard_text(src, tmp_path/'out', k)
    shards = man['shards']
    raw = text.encode()
    assert b''.join((tmp_path/'out'/s['file']).read_bytes() for s in shards) == raw
    n_lines = raw.count(b'\n') + (not raw.endswith(b'\n'))
    assert man['lines'] == n_lines and all(s['lines'] == k for s in shards[:-1]) and 1 <= shards[-1]['lines'] <= k
    assert json.loads((tmp_path/'out'/'manifest.json').read_text()) == man
    for f in (tmp_path/'out').iterdir(): f.unlink()


# ----------------------------------------------------------------------------------------------
# corpus errors

@pytest.mark.parametrize('name,data,expected', [
    ('empty.txt', b'', 'empty.txt: empty file'),
    ('blank.txt', b' \n\t\n\n', 'blank.txt: no text (only blank lines)'),
    ('nul.txt', b'abc\ndef\x00', 'nul.txt: binary content: NUL byte at byte offset 7 (line 2)'),
    ('latin1.txt', 'ok\nna\xefve\n'.encode('latin-1'), 'latin1.txt: not valid UTF-8: byte 0xef at byte offset 5 (line 2)'),
    ('truncated.txt', 'fine\n€'.encode()[:-1], 'truncated.txt: not valid UTF-8: byte 0xe2 at byte offset 5 (line 2)'),
    ('utf16.txt', 'text'.encode('utf-16'), 'utf16.txt: binary content: NUL byte'),
])
def test_corpus_errors(tmp_path, name, data, expected):
    (tmp_path/name).write_bytes(data)
    with pytest.raises(CorpusError, match=expected.replace('(', r'\(').replace(')', r'\)')) as e:
        validate_corpus(tmp_path/name)
    assert isinstance(e.value, UserError) and '\n' not in str(e.value)

def test_error_offsets_past_the_first_chunk(tmp_path):
    good = b'a line of plain ascii text\n' * 100_000                 # 2.7 MB: several 1 MiB chunks
    p = tmp_path/'big.txt'
    p.write_bytes(good + b'caf\xe9\n' + good)
    with pytest.raises(CorpusError, match=rf'byte 0xe9 at byte offset {len(good) + 3} \(line 100001\)'):
        validate_corpus(p)
    p.write_bytes(good + good[:10] + b'\x00')
    with pytest.raises(CorpusError, match=rf'NUL byte at byte offset {len(good) + 10} \(line 100001\)'):
        list(iter_documents(p))

@pytest.mark.parametrize('make,expected', [
    (lambda d: d/'missing.txt', 'missing.txt: no such file or directory'),
    (lambda d: (d/'sub').mkdir() or d/'sub', 'sub: directory contains no corpus files'),
    (lambda d: str(d/'*.nothing'), r'\*.nothing: no files match this pattern'),
    (lambda d: [], 'no corpus files given'),
])
def test_source_errors(tmp_path, make, expected):
    with pytest.raises(CorpusError, match=expected):
        validate_corpus(make(tmp_path))

def test_warnings_do_not_stop(tmp_path):
    (tmp_path/'a.txt').write_text('x\x1b[0m\n' + 'y' * 50 + '\n')
    (tmp_path/'b.txt').write_text('x\x1b[0m\n' + 'y' * 50 + '\n')
    (tmp_path/'c.txt').write_bytes(b'\xef\xbb\xbfwith a bom\n')
    rep = validate_corpus(tmp_path, max_line_chars=40)
    text = '\n'.join(rep.warnings)
    assert 'b.txt: same content as' in text and 'control character' in text and 'longer than 40' in text
    assert 'byte-order mark' in text
    assert rep.num_documents == 3 and 'total (3 files)' in str(rep)


# ----------------------------------------------------------------------------------------------
# samplers

def toy(n, parts=1):
    "Token i has id i, so a batch shows exactly where it came from (optionally as several shards)."
    a = np.arange(n, dtype=np.uint32)
    return TokenShards(np.array_split(a, parts), num_chars=n)

def batches(s, k):
    return [tuple(t.clone() for t in next(s)) for _ in range(k)]

def same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))

GEOM = dict(n=st.integers(300, 3000), B=st.integers(1, 6), T=st.integers(1, 24), W=st.integers(1, 4),
            seed=st.integers(0, 2**32), k=st.integers(0, 40), m=st.integers(1, 25))

@SETTINGS
@given(**GEOM)
def test_random_resume_exact(n, B, T, W, seed, k, m):
    for rank in range(W):
        a = RandomWindowSampler(toy(n), B, T, seed=seed, rank=rank, world_size=W)
        full = batches(a, k + m)
        b = RandomWindowSampler(toy(n), B, T, seed=seed, rank=rank, world_size=W)
        batches(b, k)
        state = json.loads(json.dumps(b.state_dict()))
        c = RandomWindowSampler(toy(n), B, T, seed=seed + 1, rank=rank, world_size=W)   # the state's seed wins
        c.load_state_dict(state)
        assert same(batches(c, m), full[k:])

@SETTINGS
@given(**GEOM)
def test_random_windows_ranks_disjoint_and_shifted(n, B, T, W, seed, k, m):
    seen = []
    for rank in range(W):
        s = RandomWindowSampler(toy(n), B, T, seed=seed, rank=rank, world_size=W)
        toks = set()
        for x, y in batches(s, m + 1):
            assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
            assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
            toks |= set(x.flatten().tolist()) | set(y.flatten().tolist())
        lo, hi = rank * n // W, (rank + 1) * n // W
        assert lo <= min(toks) and max(toks) < hi               # only inside its own share
        seen.append(toks)
    for i in range(W):
        for j in range(i + 1, W): assert not seen[i] & seen[j]
    # the state is the same on every rank
    states = [RandomWindowSampler(toy(n), B, T, seed=seed, rank=r, world_size=W).state_dict() for r in range(W)]
    assert all(s == states[0] for s in states)

def test_random_determinism_from_seed():
    a, b, c = (RandomWindowSampler(toy(100_000), 8, 32, seed=s) for s in (1, 1, 2))
    ba, bb, bc = batches(a, 20), batches(b, 20), batches(c, 20)
    assert same(ba, bb) and not same(ba, bc)

@SETTINGS
@given(n=st.integers(50, 2000), B=st.integers(1, 7), T=st.integers(1, 20), seed=st.integers(0, 1000))
def test_sequential_epoch_covers_every_window_once(n, B, T, seed):
    s = SequentialSampler(toy(n), B, T, seed=seed)
    nw = (n - 1) // T
    assert s.num_windows == nw and len(s) == -(-nw // B)
    for epoch in range(2):
        assert s.epoch == epoch
        starts = [int(v) for x, _ in s.epoch_batches() for v in x[:, 0]]
        counts = np.bincount(np.array(starts) // T, minlength=nw)
        assert starts and all(v % T == 0 for v in starts)
        assert (counts >= 1).all() and counts.sum() - nw == len(s) * B - nw   # only the fill-up repeats
        if nw % B == 0: assert (counts == 1).all()
    assert s.epoch == 2

@SETTINGS
@given(n=st.integers(200, 3000), B=st.integers(1, 5), T=st.integers(1, 16), W=st.integers(1, 4),
       seed=st.integers(0, 1000), drop_last=st.booleans(), shuffle=st.booleans())
def test_sequential_ranks_disjoint_and_cover(n, B, T, W, seed, drop_last, shuffle):
    nw = (n - 1) // T
    try: samplers = [SequentialSampler(toy(n), B, T, seed=seed, rank=r, world_size=W, drop_last=drop_last,
                                       shuffle=shuffle) for r in range(W)]
    except CorpusError:
        assert nw < W * (B if drop_last else 1); return
    assert len({len(s) for s in samplers}) == 1                 # every rank takes the same number of steps
    for _ in range(2):                                          # two epochs
        per_rank = [{int(v) // T for x, _ in s.epoch_batches() for v in x[:, 0]} for s in samplers]
        for i in range(W):
            for j in range(i + 1, W): assert not per_rank[i] & per_rank[j]
        union = set().union(*per_rank)
        if drop_last: assert len(union) == len(samplers[0]) * B * W     # all new windows, none repeated
        else: assert union == set(range(nw))

@SETTINGS
@given(n=st.integers(200, 2000), B=st.integers(1, 5), T=st.integers(1, 16), W=st.integers(1, 3),
       seed=st.integers(0, 1000), k=st.integers(0, 60), m=st.integers(1, 60))
def test_sequential_resume_exact_across_epochs_and_ranks(n, B, T, W, seed, k, m):
    if (n - 1) // T < W: return
    for rank in range(W):
        a = SequentialSampler(toy(n), B, T, seed=seed, rank=rank, world_size=W)
        full = batches(a, k + m)
        other = SequentialSampler(toy(n), B, T, seed=seed, rank=(rank + 1) % W, world_size=W)
        batches(other, k)                                       # the state saved by another rank ...
        state = json.loads(json.dumps(other.state_dict()))
        c = SequentialSampler(toy(n), B, T, seed=0, rank=rank, world_size=W)
        c.load_state_dict(state)                                # ... restores this rank exactly
        assert c.epoch == k // len(c)
        assert same(batches(c, m), full[k:])

def test_sequential_world_size_invariance():
    "W ranks with batch B cover, step by step, the windows of one process with batch W*B."
    n, B, T, W = 24 * 16 + 1, 2, 16, 3
    single = SequentialSampler(toy(n), B * W, T, seed=9)
    ranks = [SequentialSampler(toy(n), B, T, seed=9, rank=r, world_size=W) for r in range(W)]
    for _ in range(2 * len(single)):
        x, _ = next(single)
        parts = [next(r)[0] for r in ranks]
        assert set(x[:, 0].tolist()) == set(torch.cat(parts)[:, 0].tolist())

def test_sequential_no_shuffle_is_in_order():
    s = SequentialSampler(toy(101), 5, 10, shuffle=False)
    assert [int(v) for x, _ in s.epoch_batches() for v in x[:, 0]] == list(range(0, 100, 10))

def test_multi_shard_tokens_give_same_batches():
    for cls in (RandomWindowSampler, SequentialSampler):
        one, many = cls(toy(5000), 4, 64, seed=3), cls(toy(5000, parts=7), 4, 64, seed=3)
        assert same(batches(one, 30), batches(many, 30))

def test_state_mismatch_warns_and_too_small_errors():
    s = SequentialSampler(toy(1000), 4, 10, seed=1)
    batches(s, 30)
    t = SequentialSampler(toy(1000), 8, 10, seed=1)
    with pytest.warns(UserWarning, match='batches differ'):
        t.load_state_dict(s.state_dict())
    assert t.epoch == s.epoch
    with pytest.raises(ValueError): RandomWindowSampler(toy(1000), 4, 10).load_state_dict(s.state_dict())
    with pytest.raises(CorpusError, match='too few'): RandomWindowSampler(toy(40), 2, 16, world_size=4)
    with pytest.raises(CorpusError, match='too few'): SequentialSampler(toy(40), 8, 16, drop_last=True)

def test_selection_sampler_uniform_and_exact():
    counts = np.zeros(20)
    for seed in range(2000):
        pick = _SelectionSampler(20, 5, seed)
        chosen = [i for i in range(20) if pick()]
        assert len(chosen) == 5
        counts[chosen] += 1
    assert np.allclose(counts / 2000, 0.25, atol=0.04)


# ----------------------------------------------------------------------------------------------
# prepare

@pytest.fixture(scope='module')
def corpus_and_tokenizer(tmp_path_factory):
    from transformer_nb.tokenizer import train_bbpe
    d = tmp_path_factory.mktemp('prep')
    rng = np.random.default_rng(0)
    words = ['the', 'king', 'queen', 'speaks', 'and', 'all', 'listen', 'now', 'to', 'me', 'é', '😀']
    text = '\n\n'.join(' '.join(rng.choice(words, size=rng.integers(3, 40))) for _ in range(400)) + '\n'
    (d/'corpus.txt').write_text(text)
    train_bbpe([d/'corpus.txt'], d/'tok', vocab_size=300, show_progress=False)
    return d/'corpus.txt', d/'tok'

def test_prepare_multi_shard_equals_single(tmp_path, corpus_and_tokenizer):
    corpus, tok = corpus_and_tokenizer
    one = prepare(corpus, tok, tmp_path/'a', show_progress=False, verbose=False)
    many = prepare(corpus, tok, tmp_path/'b', show_progress=False, verbose=False, shard_tokens=1000, batch_chars=500)
    assert len(many.manifest['train']['shards']) > 3
    for s in ('train', 'val'):
        a, b = getattr(one, s), getattr(many, s)
        assert np.array_equal(np.asarray(a.tokens), b.tokens[0:len(b)])
        assert (a.num_chars, a.num_documents) == (b.num_chars, b.num_documents)

def _prepare_in_child(args):
    corpus, tok, cache = args
    d = prepare(corpus, tok, cache, show_progress=False, verbose=False)
    return str(d.dir), d.reused, len(d.train) + len(d.val)

def test_prepare_concurrent_same_key(tmp_path, corpus_and_tokenizer):
    corpus, tok = corpus_and_tokenizer
    with mp.get_context('spawn').Pool(2) as pool:
        res = pool.map(_prepare_in_child, [(corpus, tok, tmp_path/'c')] * 2)
    assert res[0][0] == res[1][0] and res[0][2] == res[1][2]
    # no temporary folder left (the lock file the two took turns on stays, empty)
    assert sorted(p.name for p in (tmp_path/'c').iterdir()) == ['.prepare.lock', Path(res[0][0]).name]

def test_prepare_replaces_incomplete_cache(tmp_path, corpus_and_tokenizer):
    corpus, tok = corpus_and_tokenizer
    d = prepare(corpus, tok, tmp_path, show_progress=False, verbose=False)
    (d.dir/'val_00000.bin').write_bytes(b'\x00\x01')            # truncated shard: not a valid cache any more
    again = prepare(corpus, tok, tmp_path, show_progress=False, verbose=False)
    assert not again.reused and again.dir == d.dir and len(again.val) == len(d.val)

def test_damaged_cache_is_deleted_under_the_lock(tmp_path, corpus_and_tokenizer, monkeypatch):
    "Several processes finding a damaged cache: the one holding the lock deletes and rebuilds it, the others wait."
    import threading, time
    from filelock import FileLock
    import transformer_nb.data as data_mod
    corpus, tok = corpus_and_tokenizer
    d = prepare(corpus, tok, tmp_path, show_progress=False, verbose=False)
    shard = d.dir/'val_00000.bin'
    b = bytearray(shard.read_bytes()); b[0] ^= 1; shard.write_bytes(bytes(b))   # same size, other content
    monkeypatch.setattr(data_mod, '_VERIFIED', set()); monkeypatch.setattr(data_mod, '_WRITTEN', set())
    lock = FileLock(str(tmp_path/'.prepare.lock')); lock.acquire()            # another process prepares here
    got = {}
    t = threading.Thread(target=lambda: got.update(d=prepare(corpus, tok, tmp_path, show_progress=False,
                                                            verbose=False)))
    try:
        t.start(); time.sleep(1.5)
        assert (d.dir/'manifest.json').is_file(), 'the damaged folder was deleted without holding the lock'
        assert t.is_alive()
    finally:
        lock.release(); t.join(60)
    assert not got['d'].reused and got['d'].dir == d.dir and len(got['d'].val) == len(d.val)

def test_shard_size_is_part_of_the_cache_key(tmp_path, corpus_and_tokenizer):
    corpus, tok = corpus_and_tokenizer
    a = prepare(corpus, tok, tmp_path, show_progress=False, verbose=False)
    b = prepare(corpus, tok, tmp_path, show_progress=False, verbose=False, shard_tokens=1000)
    assert b.dir != a.dir and not b.reused and b.manifest['shard_tokens'] == 1000
    assert all(s['tokens'] <= 1000 for s in b.manifest['train']['shards'])
    assert prepare(corpus, tok, tmp_path, show_progress=False, verbose=False, shard_tokens=1000).dir == b.dir

def test_dedupe_to_one_document_splits_like_one_document(tmp_path, corpus_and_tokenizer):
    "A corpus that dedupe leaves with one document (in several files) gives the shards of that document alone."
    _, tok = corpus_and_tokenizer
    doc = ''.join(f'line {i} of the one text\n' for i in range(20))
    (tmp_path/'m').mkdir()
    (tmp_path/'m'/'a.txt').write_text(doc + '\n' + doc); (tmp_path/'m'/'b.txt').write_text(doc)
    (tmp_path/'m'/'c.jsonl').write_text(json.dumps({'text': doc}) + '\n' + json.dumps({'text': doc}) + '\n')
    (tmp_path/'one.txt').write_text(doc)
    got = prepare(tmp_path/'m', tok, tmp_path/'c', dedupe=True, show_progress=False, verbose=False, workers=1)
    want = prepare(tmp_path/'one.txt', tok, tmp_path/'c', show_progress=False, verbose=False)
    assert got.manifest['duplicates'] == {'documents': 4, 'dropped': 4}
    for s in ('train', 'val'): assert np.array_equal(np.asarray(getattr(got, s).tokens), np.asarray(getattr(want, s).tokens))
