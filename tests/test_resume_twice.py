"""Resumed twice, across an epoch boundary: equal, weight for weight, to the run that never stopped.

Each case trains one uninterrupted run of `spe + 3` steps (`spe`: optimizer steps in an epoch) and the same run
stopped twice: once inside the first epoch, once after the epoch boundary (the second resume starts in the second
epoch), or exactly on it. Both end with bit-identical weights and the same per-step losses. Cases: token shards
(with dropout and gradient accumulation), a stream (`data.streaming`), and both under FSDP on 2 gloo processes
with DCP checkpoints. The schedule is constant, so a segment's shorter `total_steps` changes no learning rate.

Tiny model (1 layer x 32, 32 tokens), fp32 on CPU, a few thousand characters of tinyshakespeare: an epoch is
a dozen steps or so.
"""
import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from transformer_nb.checkpoint import checkpoint_model_tensors, checkpoint_name
from transformer_nb.config import config_from_dict
from transformer_nb.data import StreamingSampler
from transformer_nb.tokenizer import build_from_artifacts
from transformer_nb.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
SEQ, BATCH = 32, 4
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    from transformer_nb.tokenizer import train_bbpe
    d = tmp_path_factory.mktemp('twice')
    (d / 'corpus.txt').write_text(SHAKESPEARE.read_text(encoding='utf-8')[:5_000], encoding='utf-8')
    train_bbpe([d / 'corpus.txt'], d / 'tok', vocab_size=320, show_progress=False)
    return d


def config_dict(d: Path, run: Path, steps: int, streaming: bool = False, **runtime) -> dict:
    data = {'train_shards': [str(d / 'corpus.txt')], 'batch_size': BATCH, 'cache_dir': str(d / 'cache'),
            'val_fraction': 0.1}
    data.update({'streaming': True} if streaming else {'gradient_accumulation_steps': 2})
    return {'model': {'hidden_size': 32, 'intermediate_size': 64, 'num_layers': 1, 'num_attention_heads': 2,
                      'max_position_embeddings': SEQ, 'residual_dropout': 0.1, 'attn_dropout': 0.1},
            'tokenizer': {'tokenizer_json': str(d / 'tok' / 'tokenizer.json')},
            'data': data,
            'optimizer': {'learning_rate': 3e-3},
            'scheduler': {'strategy': 'constant', 'total_steps': steps},
            'runtime': {'seed': 5, 'log_every_n_steps': 1, 'device': 'cpu',
                        'checkpoint': {'directory': str(run / 'checkpoints'), 'every_n_steps': None, 'max_keep': 5},
                        'evaluation': {'every_n_steps': None, 'max_batches': 1},
                        'logging': {'tensorboard': None}, **runtime}}


def stream_boundary(d: Path, world_size: int = 1) -> int:
    "The first optimizer step whose batch reaches into the stream's second epoch, on any rank."
    tok = build_from_artifacts(d / 'tok' / 'tokenizer.json')
    first = []
    for rank in range(world_size):
        s = StreamingSampler([str(d / 'corpus.txt')], tok, BATCH // world_size, SEQ, rank, world_size)
        try:
            step = 0
            while s.epoch == 0: next(s); step += 1
        finally:
            s.close()
        first.append(step)
    return max(first)


def fit(cfg: dict, resume: bool = False) -> Trainer:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        t = Trainer(config_from_dict(cfg), resume=resume, show_progress=False)
        t.fit()
    return t


def sampler_epoch(ck: Path) -> int:
    s = json.loads((ck / 'trainer_state.json').read_text())['sampler']
    return max(r['epoch'] for r in s['ranks']) if 'ranks' in s else s['epoch']


def stops_for(spe: int, case: str) -> tuple[int, int, int]:
    "The two stops and the end: inside epoch 0; then after the boundary (or exactly on it); end in epoch 1."
    return 2, spe + (0 if case == 'on' else 1), spe + 3


@pytest.mark.parametrize('case', ['after', 'on'])
def test_shards_resumed_twice_across_an_epoch(assets, tmp_path, case):
    probe = Trainer(config_from_dict(config_dict(assets, tmp_path / 'probe', 1)), show_progress=False)
    spe = probe.steps_per_epoch
    probe.close()
    s1, s2, end = stops_for(spe, case)
    ref = fit(config_dict(assets, tmp_path / 'ref', end))
    assert ref.state.epoch == 1
    run = tmp_path / 'stopped'
    a = fit(config_dict(assets, run, s1))
    b = fit(config_dict(assets, run, s2), resume=True)
    c = fit(config_dict(assets, run, end), resume=True)
    assert sampler_epoch(run / 'checkpoints' / checkpoint_name(s1)) == 0
    assert sampler_epoch(run / 'checkpoints' / checkpoint_name(s2)) == 1      # the second resume starts in epoch 1
    assert_equal_runs(ref, [a, b, c], end)


def test_stream_resumed_twice_across_an_epoch(assets, tmp_path):
    boundary = stream_boundary(assets)
    s1, s2, end = 2, boundary + 1, boundary + 3
    ref = fit(config_dict(assets, tmp_path / 'ref', end, streaming=True))
    run = tmp_path / 'stopped'
    a = fit(config_dict(assets, run, s1, streaming=True))
    b = fit(config_dict(assets, run, s2, streaming=True), resume=True)
    c = fit(config_dict(assets, run, end, streaming=True), resume=True)
    assert sampler_epoch(run / 'checkpoints' / checkpoint_name(s1)) == 0
    assert sampler_epoch(run / 'checkpoints' / checkpoint_name(s2)) == 1
    assert_equal_runs(ref, [a, b, c], end)


def assert_equal_runs(ref: Trainer, parts: list, end: int):
    steps = [r['step'] for t in parts for r in t.history['train']]
    assert steps == list(range(1, end + 1)), steps
    got = [r['loss'] for t in parts for r in t.history['train']]
    want = [r['loss'] for r in ref.history['train']]
    assert got == want, [abs(x - y) for x, y in zip(got, want)]
    sa, sb = parts[-1].raw_model.state_dict(), ref.raw_model.state_dict()
    assert sa.keys() == sb.keys()
    worst = max((sa[k] - sb[k]).abs().max().item() for k in sa)
    print(f'max |weight difference| after two resumes: {worst}')
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --- under FSDP: 2 gloo processes, one launch running the reference and the three segments of each case ------

FSDP_SCRIPT = textwrap.dedent('''
    import json, os, sys, warnings
    warnings.simplefilter('ignore')
    import torch.distributed as dist
    dist.init_process_group('gloo')          # one group for the whole script: each Trainer finds it made
    sys.path.insert(0, {tests!r})
    from test_resume_twice import config_dict, stream_boundary
    from transformer_nb.config import config_from_dict
    from transformer_nb.trainer import Trainer
    d, out = __import__('pathlib').Path({assets!r}), __import__('pathlib').Path({out!r})
    def fit(name, steps, streaming, resume=False):
        cfg = config_dict(d, out / name, steps, streaming, distributed='fsdp')
        t = Trainer(config_from_dict(cfg), resume=resume, show_progress=False)
        t.fit()
        return t
    for streaming in (False, True):
        kind = 'stream' if streaming else 'shards'
        if streaming:
            spe = stream_boundary(d, dist.get_world_size())
        else:
            t = Trainer(config_from_dict(config_dict(d, out / 'probe', 1, False, distributed='fsdp')),
                        show_progress=False)
            spe = t.steps_per_epoch
            t.close()
        s1, s2, end = 2, spe + 1, spe + 3
        fit(kind + '-ref', end, streaming)
        for steps, resume in ((s1, False), (s2, True), (end, True)):
            fit(kind + '-stopped', steps, streaming, resume)
        if dist.get_rank() == 0:
            (out / (kind + '.json')).write_text(json.dumps([s1, s2, end]))
    dist.destroy_process_group()
''')


def test_fsdp_resumed_twice_across_an_epoch(assets, tmp_path):
    script = tmp_path / 'fsdp_twice.py'
    script.write_text(FSDP_SCRIPT.format(tests=str(Path(__file__).parent), assets=str(assets), out=str(tmp_path)))
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
                        str(script)], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for kind in ('shards', 'stream'):
        s1, s2, end = json.loads((tmp_path / f'{kind}.json').read_text())
        ref, run = tmp_path / f'{kind}-ref', tmp_path / f'{kind}-stopped'
        assert sampler_epoch(run / 'checkpoints' / checkpoint_name(s1)) == 0
        assert sampler_epoch(run / 'checkpoints' / checkpoint_name(s2)) == 1
        rows = lambda r: [(x['step'], x['loss']) for x in map(json.loads, (r / 'metrics.jsonl').read_text().splitlines())
                          if x['kind'] == 'train']
        assert rows(run) == rows(ref) and [s for s, _ in rows(ref)] == list(range(1, end + 1))
        a = checkpoint_model_tensors(run / 'checkpoints' / checkpoint_name(end))
        b = checkpoint_model_tensors(ref / 'checkpoints' / checkpoint_name(end))
        worst = max((a[k] - b[k]).abs().max().item() for k in b)
        print(f'FSDP {kind}: max |weight difference| after two resumes: {worst}')
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
