"""Multi-process training: 2 CPU processes under `torch.distributed.run` (gloo) give the same losses as a
single process with the same global batch; the ranks draw disjoint data; only rank 0 logs and writes.

The DDP run also accumulates gradients over 2 micro-batches (global batch 8 = 2 sequences x 2 micro-steps
x 2 processes; the first micro-step runs under `no_sync`); the single process takes all 8 sequences in
one forward pass. Why the results can match: each rank's sampler takes windows `rank::world_size` of the
same shuffled order, so the union of the ranks' micro-batches of a step is exactly the 8-sequence batch a
single process draws for that step. Averaging the micro-batch losses, then DDP averaging the ranks'
gradients, gives the gradient of the mean loss over those 8 sequences. Only the order of floating-point
additions differs (four quarter-batch means averaged vs one mean), a relative error of ~1e-7 per step in fp32;
AdamW's normalized updates keep it at that scale over a few steps, so the per-step losses (~6 nats)
agree to well within 1e-5 and the final weights to within 1e-5 (measured: ~1e-6).
"""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from transformer_nb.checkpoint import checkpoint_name, list_checkpoints, load_model_tensors, verify_checkpoint
from transformer_nb.config import config_from_dict, save_config

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
STEPS, TOL = 6, 1e-5
PEAK = 1e12          # per device (TNB_PEAK_FLOPS), so that MFU is checkable

SCRIPT = textwrap.dedent('''
    import os, sys, warnings
    warnings.simplefilter('ignore')
    from transformer_nb.config import load_config
    from transformer_nb.trainer import Trainer
    r = Trainer(load_config(sys.argv[1]), show_progress=False).fit()
    os.write(1, f"RESULT {r['step']}\\n".encode())   # one write: the ranks share stdout
''')


def make_config(tmp: Path, run: Path, accum: int = 1, optimizer: dict | None = None):
    return config_from_dict({
        'model': {'hidden_size': 32, 'intermediate_size': 64, 'num_layers': 2, 'num_attention_heads': 2,
                  'max_position_embeddings': 32},
        'tokenizer': {'tokenizer_json': str(tmp / 'tok' / 'tokenizer.json')},
        'data': {'train_shards': [str(tmp / 'corpus.txt')], 'batch_size': 8, 'cache_dir': str(tmp / 'data'),
                 'gradient_accumulation_steps': accum},
        'optimizer': {'learning_rate': 3e-3, **(optimizer or {})},
        'scheduler': {'strategy': 'cosine_with_warmup', 'warmup_steps': 2, 'total_steps': STEPS, 'min_lr': 3e-4},
        'runtime': {'seed': 3, 'log_every_n_steps': 1, 'device': 'cpu',
                    'checkpoint': {'directory': str(run / 'checkpoints'), 'every_n_steps': 3},
                    'evaluation': {'every_n_steps': 3, 'max_batches': 2},
                    'logging': {'tensorboard': None}}})


def read_metrics(run: Path):
    rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    return [r for r in rows if r['kind'] == 'train'], [r for r in rows if r['kind'] == 'eval']


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    from transformer_nb.tokenizer import train_bbpe
    tmp = tmp_path_factory.mktemp('ddp')
    (tmp / 'corpus.txt').write_text(SHAKESPEARE.read_text(encoding='utf-8')[:60_000], encoding='utf-8')
    train_bbpe([tmp / 'corpus.txt'], tmp / 'tok', vocab_size=384, show_progress=False)
    (tmp / 'train.py').write_text(SCRIPT)
    return tmp


def train_pair(tmp: Path, prefix: str = '', optimizer: dict | None = None) -> dict:
    "The single-process run and the 2-process DDP run (2 accumulation steps) of the same config."
    out = {}
    for name, nproc, accum in (('single', 1, 1), ('ddp', 2, 2)):
        name = prefix + name
        save_config(make_config(tmp, tmp / name, accum, optimizer), tmp / f'{name}.yaml')
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', 'TNB_PEAK_FLOPS': str(PEAK)}
        cmd = ([sys.executable, str(tmp / 'train.py')] if nproc == 1 else
               [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
                str(tmp / 'train.py')]) + [str(tmp / f'{name}.yaml')]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        out[name.removeprefix(prefix)] = (tmp / name, p.stdout)
    return out


@pytest.fixture(scope='module')
def runs(assets):
    return train_pair(assets)


def test_ddp_losses_match_single_process(runs):
    (single, _), (ddp, _) = runs['single'], runs['ddp']
    tr1, ev1 = read_metrics(single)
    tr2, ev2 = read_metrics(ddp)
    assert [r['step'] for r in tr1] == [r['step'] for r in tr2] == list(range(1, STEPS + 1))
    diffs = [abs(a['loss'] - b['loss']) for a, b in zip(tr1, tr2)]
    print('per-step |loss difference|:', diffs)
    assert max(diffs) <= TOL
    assert [round(r['lr'], 12) for r in tr1] == [round(r['lr'], 12) for r in tr2]
    assert max(abs(a['grad_norm'] - b['grad_norm']) for a, b in zip(tr1, tr2)) <= 1e-4
    assert len(ev1) == len(ev2) == 2
    for a, b in zip(ev1, ev2):
        assert a['tokens'] == b['tokens'] and abs(a['loss'] - b['loss']) <= TOL


def test_ddp_final_weights_match(runs):
    (single, _), (ddp, _) = runs['single'], runs['ddp']
    a = load_model_tensors(single / 'checkpoints' / checkpoint_name(STEPS) / 'model.safetensors')
    b = load_model_tensors(ddp / 'checkpoints' / checkpoint_name(STEPS) / 'model.safetensors')
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print('max |weight difference|:', worst)
    assert a.keys() == b.keys() and worst <= TOL


def test_ddp_rank0_alone_logs_and_saves(runs):
    ddp, stdout = runs['ddp']
    assert stdout.count('RESULT') == 2                                 # both ranks finished
    assert sum(l.startswith('training ') for l in stdout.splitlines()) == 1   # one header: rank 0 only
    assert sum(l.startswith('step ') for l in stdout.splitlines()) == STEPS
    assert len(read_metrics(ddp)[0]) == STEPS                          # one writer of metrics.jsonl
    cks = list_checkpoints(ddp / 'checkpoints')
    assert [c.name for c in cks] == [checkpoint_name(3), checkpoint_name(STEPS)]
    assert all(verify_checkpoint(c) == [] for c in cks)
    state = json.loads((cks[-1] / 'trainer_state.json').read_text())
    assert state['world_size'] == 2 and len(state['rng']) == 2           # every rank's RNG state saved
    assert not (ddp / 'train.lock').exists()


def test_ranks_draw_disjoint_windows_whose_union_is_the_global_batch(runs):
    from transformer_nb.data import PreparedData, SequentialSampler
    ddp, _ = runs['ddp']
    data_dir = next((ddp.parent / 'data').glob('tokens-*'))
    train = PreparedData.load(data_dir).train
    one = SequentialSampler(train, 8, 32, seed=3)
    r0, r1 = (SequentialSampler(train, 4, 32, seed=3, rank=r, world_size=2) for r in (0, 1))
    for _ in range(STEPS):
        x, (x0, x1) = next(one)[0], (next(r0)[0], next(r1)[0])
        rows = lambda t: {tuple(r) for r in t.tolist()}
        assert not rows(x0) & rows(x1)
        assert rows(x0) | rows(x1) == rows(x)


def test_mfu_counts_every_device(runs):
    "tokens/s counts every rank's tokens, so MFU divides by world_size x one device's peak."
    from transformer_nb.model import DecoderModel
    from transformer_nb.tokenizer import build_from_artifacts
    for name, world in (('single', 1), ('ddp', 2)):
        run, _ = runs[name]
        cfg = make_config(run.parent, run)
        vocab = build_from_artifacts(run.parent / 'tok' / 'tokenizer.json').get_vocab_size()
        fpt = DecoderModel(cfg.model, vocab).flops_per_token(32)
        rows = [r for r in read_metrics(run)[0] if r.get('tokens_per_sec') and r['tokens_per_sec'] == r['tokens_per_sec']]
        assert rows
        for r in rows:
            assert abs(r['mfu'] - fpt * r['tokens_per_sec'] / (world * PEAK)) <= 1e-9 * max(1.0, r['mfu'])


def test_ddp_with_muon_matches_single_process(assets):
    """optimizer.algorithm=muon under DDP: every rank orthogonalises the same all-reduced full matrices, so the
    run follows the single process as closely as AdamW's does (on the CPU the Newton-Schulz iteration runs in
    float32 (`muon_ns_dtype: auto`); measured: losses within 1e-6, weights within 2e-7)."""
    r = train_pair(assets, 'muon-', {'algorithm': 'muon', 'muon_learning_rate': 0.02})
    (single, _), (ddp, out) = r['single'], r['ddp']
    assert out.count('RESULT') == 2
    tr1, tr2 = read_metrics(single)[0], read_metrics(ddp)[0]
    diffs = [abs(a['loss'] - b['loss']) for a, b in zip(tr1, tr2)]
    print('muon: per-step |loss difference|:', diffs)
    assert len(tr1) == len(tr2) == STEPS and max(diffs) <= TOL
    assert tr1[-1]['loss'] < tr1[0]['loss'] - 0.1                        # it trains
    a = load_model_tensors(single / 'checkpoints' / checkpoint_name(STEPS) / 'model.safetensors')
    b = load_model_tensors(ddp / 'checkpoints' / checkpoint_name(STEPS) / 'model.safetensors')
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print('muon: max |weight difference|:', worst)
    assert worst <= TOL
