"""Exact resume: a run of 2N steps equals a run of N steps + `resume=True` to 2N (losses and weights),
corrupt checkpoints are skipped, model changes refused, and a real SIGTERM checkpoints and exits cleanly.

Tiny model, tiny corpus (the first 60,000 characters of tinyshakespeare), fp32 on CPU."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from transformer_nb.checkpoint import (CheckpointError, CheckpointWarning, checkpoint_name, latest_checkpoint,
                                       list_checkpoints, verify_checkpoint)
from transformer_nb.config import config_from_dict, UserError
from transformer_nb.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
N = 4            # steps before the interruption; the full run has 2N


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    "A small corpus and a 384-token tokenizer trained on it, shared by the tests of this file."
    from transformer_nb.tokenizer import train_bbpe
    d = tmp_path_factory.mktemp('assets')
    corpus = d / 'corpus.txt'
    corpus.write_text(SHAKESPEARE.read_text(encoding='utf-8')[:60_000], encoding='utf-8')
    train_bbpe([corpus], d / 'tok', vocab_size=384, show_progress=False)
    return {'corpus': corpus, 'tokenizer': d / 'tok' / 'tokenizer.json', 'cache': d / 'data'}


def make_config(assets, run: Path, **over):
    "A tiny config writing into `run`; `over` maps dotted keys to values."
    d = {'model': {'hidden_size': 32, 'intermediate_size': 64, 'num_layers': 2, 'num_attention_heads': 2,
                   'max_position_embeddings': 32, 'residual_dropout': 0.1, 'attn_dropout': 0.1},
         'tokenizer': {'tokenizer_json': str(assets['tokenizer'])},
         'data': {'train_shards': [str(assets['corpus'])], 'batch_size': 4, 'cache_dir': str(assets['cache'])},
         'optimizer': {'learning_rate': 3e-3},
         'scheduler': {'strategy': 'constant', 'total_steps': 2 * N},
         'runtime': {'seed': 7, 'log_every_n_steps': 1,
                     'checkpoint': {'directory': str(run / 'checkpoints'), 'every_n_steps': N, 'max_keep': 5},
                     'evaluation': {'every_n_steps': None, 'max_batches': 1},
                     'logging': {'tensorboard': None}}}
    for key, v in over.items():
        *path, last = key.split('.')
        sec = d
        for p in path: sec = sec.setdefault(p, {})
        sec[last] = v
    return config_from_dict(d)


def run(cfg, resume=False, **kw):
    "Fit quietly; return (trainer, stdout text)."
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter('ignore')
        t = Trainer(cfg, resume=resume, show_progress=False, **kw)
        t.fit()
    return t, out.getvalue()


def losses(t): return [r['loss'] for r in t.history['train']]
def steps(t): return [r['step'] for r in t.history['train']]


def assert_same_weights(a, b):
    sa, sb = a.raw_model.state_dict(), b.raw_model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa: assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope='module')
def full_run(assets, tmp_path_factory):
    "The uninterrupted reference: 2N steps, checkpoints at N and 2N."
    t, _ = run(make_config(assets, tmp_path_factory.mktemp('full')))
    return t


@pytest.mark.parametrize('accum', [1, 2])
def test_resume_is_exact(assets, tmp_path, full_run, accum):
    over = {'data.gradient_accumulation_steps': accum}
    ref = full_run if accum == 1 else run(make_config(assets, tmp_path / 'full', **over))[0]
    part, _ = run(make_config(assets, tmp_path / 'part', **over, **{'scheduler.total_steps': N}))
    rest, out = run(make_config(assets, tmp_path / 'part', **over), resume=True)
    assert f'resumed from {tmp_path / "part" / "checkpoints" / checkpoint_name(N)}' in out
    assert steps(part) + steps(rest) == list(range(1, 2 * N + 1))
    for x, y in zip(losses(part) + losses(rest), losses(ref)): assert abs(x - y) <= 1e-6
    assert_same_weights(rest, ref)
    # the final checkpoints hold identical tensors (weights and optimizer moments) and optimizer JSON
    # (the files' bytes may differ: safetensors writes its metadata map in arbitrary order)
    a, b = tmp_path / 'part' / 'checkpoints' / checkpoint_name(2 * N), ref.checkpoint_dir / checkpoint_name(2 * N)
    for f in ('model.safetensors', 'optimizer.safetensors'):
        ta, tb = load_file(a / f), load_file(b / f)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f
    assert (a / 'optimizer.json').read_text() == (b / 'optimizer.json').read_text()


MUON = {'optimizer.algorithm': 'muon', 'optimizer.muon_learning_rate': 0.02, 'optimizer.muon_weight_decay': 0.01,
        'model.qk_norm': True, 'model.activation': 'relu2', 'model.zero_init_output': True, 'model.logit_softcap': 15.0,
        'scheduler.warmup_steps': 2}     # constant after a warm-up: the same schedule for N and 2N steps


def test_resume_is_exact_with_muon_and_the_recipe_switches(assets, tmp_path):
    "Muon + AdamW state (momentum buffers, Adam moments, steps) checkpoints and resumes exactly: N + resume == 2N."
    ref, _ = run(make_config(assets, tmp_path / 'full', **MUON))
    assert type(ref.optimizer).__name__ == 'MuonWithAdamW'
    part, _ = run(make_config(assets, tmp_path / 'part', **MUON, **{'scheduler.total_steps': N}))
    rest, out = run(make_config(assets, tmp_path / 'part', **MUON, **{'scheduler.total_steps': 2 * N}), resume=True)
    assert 'resumed from' in out
    assert steps(part) + steps(rest) == list(range(1, 2 * N + 1))
    for x, y in zip(losses(part) + losses(rest), losses(ref)): assert abs(x - y) <= 1e-6
    assert_same_weights(rest, ref)
    a, b = tmp_path / 'part' / 'checkpoints' / checkpoint_name(2 * N), ref.checkpoint_dir / checkpoint_name(2 * N)
    ta, tb = load_file(a / 'optimizer.safetensors'), load_file(b / 'optimizer.safetensors')
    assert any(k.startswith('muon.') and 'momentum_buffer' in k for k in ta) and any(k.startswith('adam_w.') for k in ta)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert (a / 'optimizer.json').read_text() == (b / 'optimizer.json').read_text()
    # the schedule drives both optimizers: Muon's rate is AdamW's times muon_learning_rate / learning_rate
    lrs = {g.get('lr_scale'): g['lr'] for g in rest.optimizer.param_groups}
    assert abs(lrs[0.02 / 3e-3] - lrs[None] * 0.02 / 3e-3) < 1e-12


def test_resume_with_another_optimizer_is_refused(assets, tmp_path):
    run(make_config(assets, tmp_path / 'r', **{'scheduler.total_steps': N}))
    with pytest.raises(CheckpointError, match='optimizer.algorithm') as e, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        Trainer(make_config(assets, tmp_path / 'r', **{'optimizer.algorithm': 'muon'}), resume=True)
    assert '\n' not in str(e.value)


def test_old_checkpoint_without_the_new_model_keys_resumes(assets, tmp_path, full_run):
    "A checkpoint written before qk_norm & co. existed (its model_config lacks them) resumes with their defaults."
    run(make_config(assets, tmp_path / 'r', **{'scheduler.total_steps': N}))
    ck = tmp_path / 'r' / 'checkpoints' / checkpoint_name(N)
    man = json.loads((ck / 'manifest.json').read_text())
    for k in ('qk_norm', 'zero_init_output', 'logit_softcap'): del man['model_config'][k]
    (ck / 'manifest.json').write_text(json.dumps(man))
    t, out = run(make_config(assets, tmp_path / 'r'), resume=True)
    assert 'resumed from' in out
    assert_same_weights(t, full_run)


def test_resume_skips_corrupt_newest(assets, tmp_path, full_run):
    every2 = {'runtime.checkpoint.every_n_steps': 2}
    run(make_config(assets, tmp_path / 'r', **every2, **{'scheduler.total_steps': N + 2}))   # checkpoints N-2, N, N+2
    newest = tmp_path / 'r' / 'checkpoints' / checkpoint_name(N + 2)
    f = newest / 'model.safetensors'
    b = bytearray(f.read_bytes()); b[len(b) // 2] ^= 0xFF; f.write_bytes(bytes(b))
    with pytest.warns(CheckpointWarning, match=r'model\.safetensors: sha256 mismatch'):
        t = Trainer(make_config(assets, tmp_path / 'r', **every2), resume=True, show_progress=False)
    with contextlib.redirect_stdout(io.StringIO()): t.fit()
    assert steps(t)[0] == N + 1
    assert_same_weights(t, full_run)                               # continued exactly from step N
    assert verify_checkpoint(newest) == []                         # the corrupt folder was replaced


def test_resume_with_all_checkpoints_corrupt_is_an_error(assets, tmp_path):
    run(make_config(assets, tmp_path / 'r', **{'scheduler.total_steps': N}))
    (tmp_path / 'r' / 'checkpoints' / checkpoint_name(N) / 'trainer_state.json').write_text('{}')
    with pytest.raises(CheckpointError, match='none is valid'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        Trainer(make_config(assets, tmp_path / 'r'), resume=True)
    assert not (tmp_path / 'r' / 'train.lock').exists()            # a failed start releases the lock


def test_resume_without_checkpoint_starts_from_scratch(assets, tmp_path, full_run):
    t, out = run(make_config(assets, tmp_path / 'new'), resume=True)
    assert 'no checkpoint in' in out and 'starting from scratch' in out
    assert losses(t) == losses(full_run)


def test_resume_refuses_another_model(assets, tmp_path):
    run(make_config(assets, tmp_path / 'r', **{'scheduler.total_steps': N}))
    with pytest.raises(CheckpointError) as e:
        Trainer(make_config(assets, tmp_path / 'r', **{'model.num_layers': 3, 'model.rope_theta': 500.0}), resume=True)
    msg = str(e.value)
    assert 'model.num_layers: 2 -> 3' in msg and 'model.rope_theta: None -> 500.0' in msg and '\n' not in msg
    assert isinstance(e.value, UserError)


def test_resume_accepts_a_longer_run_and_logs_changes(assets, tmp_path, full_run):
    run(make_config(assets, tmp_path / 'r', **{'scheduler.total_steps': N}))
    t, out = run(make_config(assets, tmp_path / 'r', **{'optimizer.weight_decay': 0.0}), resume=True)
    assert f'run length changed: {N} -> {2 * N} steps' in out
    assert f'scheduler.total_steps: {N} -> {2 * N}' in out and 'optimizer.weight_decay: 0.01 -> 0.0' in out
    assert t.step == 2 * N


SIGTERM_SCRIPT = textwrap.dedent('''
    import sys, warnings
    warnings.simplefilter('ignore')
    sys.path.insert(0, {tests!r})
    from test_resume import make_config
    from transformer_nb.trainer import Trainer
    assets = {assets!r}
    r = Trainer(make_config(assets, __import__('pathlib').Path({run!r}), **{over!r}), show_progress=False).fit()
    print('RESULT', r['step'], r['interrupted'], flush=True)
''')


def test_sigterm_checkpoints_and_exits_cleanly(assets, tmp_path):
    "A real SIGTERM to a training process: it finishes the step, saves, exits 0; --resume then continues."
    a = {k: str(v) for k, v in assets.items()}
    over = {'scheduler.total_steps': 100000, 'runtime.checkpoint.every_n_steps': None}
    code = SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), assets=a, run=str(tmp_path / 'r'), over=over)
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:                         # wait for the third logged step
            if line.startswith('step ') and line.split()[1].startswith('3/'): break
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 0, err
    result = [l for l in out.splitlines() if l.startswith('RESULT')][0].split()
    assert result[2] == 'SIGTERM' and 'stopped by SIGTERM' in out
    step = int(result[1])
    ck = latest_checkpoint(tmp_path / 'r' / 'checkpoints')
    assert ck.name == checkpoint_name(step) and verify_checkpoint(ck) == []
    assert not (tmp_path / 'r' / 'train.lock').exists()
    t, _ = run(make_config(assets, tmp_path / 'r', **{'scheduler.total_steps': step + 2}), resume=True)
    assert steps(t) == [step + 1, step + 2]


def test_resume_with_another_run_length_warns_when_the_lr_moves(assets, tmp_path):
    "A decaying schedule is a function of total_steps: resuming with another length jumps the lr, and says so."
    cos = {'scheduler.strategy': 'cosine', 'scheduler.min_lr': 0.0}
    run(make_config(assets, tmp_path / 'r', **{**cos, 'scheduler.total_steps': N}))
    with pytest.warns(UserWarning, match=r'not stretched: the learning rate of step 5 moves from 0 \(old length\)'):
        t = Trainer(make_config(assets, tmp_path / 'r', **cos), resume=True, show_progress=False)
    t.close()
