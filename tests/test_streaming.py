"""Streaming training (`data.streaming: true`): batches read, tokenized and packed while training.

A streaming run of 2N steps equals N steps + resume to 2N, step by step (losses) and in the final weights;
the checkpoint holds the stream position; a stream position does not load into another geometry; a Hub
dataset without a pinned revision is refused for streaming; JSONL sources stream too. Tiny model, CPU."""
import contextlib
import io
import json
import warnings
from pathlib import Path

import pytest
import torch

from transformer_nb.base import UserError
from transformer_nb.checkpoint import CheckpointError, latest_checkpoint
from transformer_nb.config import config_from_dict
from transformer_nb.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
N = 4


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    from transformer_nb.tokenizer import train_bbpe
    d = tmp_path_factory.mktemp('stream')
    text = SHAKESPEARE.read_text(encoding='utf-8')
    (d / 'train.txt').write_text(text[:40_000], encoding='utf-8')
    (d / 'val.txt').write_text(text[40_000:46_000], encoding='utf-8')
    docs = [b for b in text[:40_000].split('\n\n') if b.strip()]
    (d / 'train.jsonl').write_text(''.join(json.dumps({'meta': {'text': t}}) + '\n' for t in docs), encoding='utf-8')
    train_bbpe([d / 'train.txt'], d / 'tok', vocab_size=320, show_progress=False)
    return d


def make_config(d: Path, run: Path, **over):
    c = {'model': {'hidden_size': 32, 'intermediate_size': 64, 'num_layers': 1, 'num_attention_heads': 2,
                   'max_position_embeddings': 32, 'residual_dropout': 0.1},
         'tokenizer': {'tokenizer_json': str(d / 'tok' / 'tokenizer.json')},
         'data': {'train_shards': [str(d / 'train.txt')], 'validation_shards': [str(d / 'val.txt')], 'batch_size': 4,
                  'streaming': True, 'cache_dir': str(d / 'cache')},
         'optimizer': {'learning_rate': 3e-3},
         'scheduler': {'strategy': 'constant', 'total_steps': 2 * N},
         'runtime': {'seed': 3, 'log_every_n_steps': 1,
                     'checkpoint': {'directory': str(run / 'checkpoints'), 'every_n_steps': N, 'max_keep': 5},
                     'evaluation': {'every_n_steps': N, 'max_batches': 1}, 'logging': {'tensorboard': None}}}
    for key, v in over.items():
        *path, last = key.split('.')
        sec = c
        for p in path: sec = sec.setdefault(p, {})
        sec[last] = v
    return config_from_dict(c)


def fit(cfg, resume=False):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        t = Trainer(cfg, resume=resume, show_progress=False)
        t.fit()
    return t


def losses(t): return [(r['step'], r['loss']) for r in t.history['train']]


@pytest.mark.parametrize('source', ['txt', 'jsonl'])
def test_streaming_resume_is_exact(assets, tmp_path, source):
    over = {} if source == 'txt' else {'data.train_shards': [str(assets / 'train.jsonl')], 'data.text_field': 'meta.text'}
    full = fit(make_config(assets, tmp_path / 'full', **over))
    half = fit(make_config(assets, tmp_path / 'cut', **over, **{'scheduler.total_steps': N}))
    ck = latest_checkpoint(tmp_path / 'cut' / 'checkpoints')
    st = json.loads((ck / 'trainer_state.json').read_text())['sampler']
    assert st['sampler'] == 'stream' and st['step'] == N and st['offset'] >= 0 and st['doc'] > 0, st
    rest = fit(make_config(assets, tmp_path / 'cut', **over), resume=True)
    assert losses(half) + losses(rest) == losses(full)
    assert full.last_eval is not None and rest.last_eval['loss'] == full.last_eval['loss']
    a, b = full.raw_model.state_dict(), rest.raw_model.state_dict()
    for k in a: assert torch.equal(a[k], b[k]), k
    assert not (tmp_path / 'full' / 'data').exists() or not any((tmp_path / 'full' / 'data').rglob('*.bin'))


def test_streaming_differs_from_shards_only_in_order(assets, tmp_path):
    "Same model and data, streaming vs prepared shards: both train (finite, falling loss); the stream needs no shards."
    t = fit(make_config(assets, tmp_path / 's', **{'scheduler.total_steps': 6}))
    ls = [l for _, l in losses(t)]
    assert all(torch.isfinite(torch.tensor(ls))) and ls[-1] < ls[0]
    assert not list((assets / 'cache').rglob('*.bin'))


def test_streaming_refusals(assets, tmp_path):
    fit(make_config(assets, tmp_path / 'r', **{'scheduler.total_steps': N}))
    cfg = make_config(assets, tmp_path / 'r', **{'data.sequence_length': 16})
    with pytest.raises(CheckpointError, match='seq_len 32 -> 16'): fit(cfg, resume=True)
    cfg = make_config(assets, tmp_path / 'r', **{'data.streaming': False})
    with pytest.raises(CheckpointError, match="'stream' sampler"): fit(cfg, resume=True)
    with pytest.raises(UserError, match='revision='):
        fit(make_config(assets, tmp_path / 'h', **{'data.train_shards': ['hf:someone/some-dataset']}))
    with pytest.raises(UserError, match='total_steps'):
        fit(make_config(assets, tmp_path / 'e', **{'scheduler.total_steps': None, 'scheduler.total_epochs': 1}))
    with pytest.raises(UserError, match='data.dedupe'):
        make_config(assets, tmp_path / 'x', **{'data.dedupe': True})


def test_streaming_without_validation_does_not_evaluate(assets, tmp_path):
    t = fit(make_config(assets, tmp_path / 'nv', **{'data.validation_shards': [], 'scheduler.total_steps': N}))
    assert t.last_eval is None and t.step == N


# ----------------------------------------------------------------------------------------------
# the work split over ranks, and the sampler states

def four_files(assets, tmp_path):
    text = (assets / 'train.txt').read_text(encoding='utf-8')
    docs = [b.strip() + '\n' for b in text.split('\n\n') if b.strip()]
    d = tmp_path / 'four'; d.mkdir()
    for i in range(4): (d / f'part{i}.txt').write_text('\n'.join(docs[i::4]), encoding='utf-8')
    return d


def test_streaming_ranks_read_only_their_files(assets, tmp_path, monkeypatch):
    "2 ranks, 4 files: each rank opens only its two files, and together they read every document once per epoch."
    import transformer_nb.sources as sources
    from transformer_nb.data import _stream_docs, rank_sources
    from transformer_nb.sources import resolve_corpus
    from transformer_nb.tokenizer import build_from_artifacts, eos_id
    corpus = resolve_corpus(four_files(assets, tmp_path))
    tok = build_from_artifacts(assets / 'tok')
    opened, real = [], sources.open_binary
    monkeypatch.setattr(sources, 'open_binary', lambda p: (opened.append(Path(p).name), real(p))[1])
    seen, mine = [], [rank_sources(corpus, rank, 2) for rank in (0, 1)]
    assert sorted(mine[0] + mine[1]) == [0, 1, 2, 3] and len(mine[0]) == len(mine[1]) == 2
    for rank in (0, 1):
        opened.clear()
        for (epoch, s, r, k), ids in _stream_docs(corpus, tok, eos_id(tok), rank, 2):
            if epoch: break
            if ids[-1] == eos_id(tok): seen.append((s, r))
        assert set(opened) == {f'part{i}.txt' for i in mine[rank]}, opened
    everything = [pos for pos, _ in sources.iter_corpus(corpus)]
    assert sorted(seen) == sorted(everything) and len(seen) == len(set(seen))


def test_streaming_split_by_file_resumes_exactly(assets, tmp_path):
    from transformer_nb.data import StreamingSampler
    from transformer_nb.tokenizer import build_from_artifacts
    d, tok = four_files(assets, tmp_path), build_from_artifacts(assets / 'tok')
    for max_doc_chars in (1 << 20, 40):            # (40: long documents come as several runs of tokens)
        a = StreamingSampler(d, tok, 2, 16, rank=1, world_size=2, max_doc_chars=max_doc_chars)
        for _ in range(7): next(a)
        saved = json.loads(json.dumps(a.state_dict()))
        ahead = [next(a)[0] for _ in range(5)]; a.close()
        b = StreamingSampler(d, tok, 2, 16, rank=1, world_size=2, max_doc_chars=max_doc_chars)
        b.load_state_dict(saved)
        for x in ahead: assert torch.equal(next(b)[0], x)
        b.close()
    # a position belongs to its rank
    with pytest.raises(ValueError, match='rank 1 -> 0'):
        StreamingSampler(d, tok, 2, 16, rank=0, world_size=2).load_state_dict(saved)


def test_sequential_sampler_load_drops_a_stale_permutation():
    import numpy as np
    from transformer_nb.data import SequentialSampler, TokenShards
    shards = TokenShards.from_array(np.arange(4000, dtype=np.uint16))
    s = SequentialSampler(shards, 4, 16, seed=0)
    next(s)                                                  # draws seed 0's permutation of epoch 0
    s.load_state_dict(SequentialSampler(shards, 4, 16, seed=1).state_dict())
    fresh = SequentialSampler(shards, 4, 16, seed=1)
    assert torch.equal(next(s)[0], next(fresh)[0])
