"""The batch and the waits of a multi-process run (gloo, 2-4 CPU processes under `torch.distributed.run`).

- The global batch is a property of the config file: the same config trains on the same number of tokens per
  optimizer step, with the same losses, on 1, 2 and 4 processes (read from `trainer_state.json` and
  `metrics.jsonl`). The config is the original project's form (batch 4 < 8 accumulation steps: 4 sequences per
  forward pass on one process, 32 per step), the one whose global batch used to grow with the process count.
- A global batch that the processes can't split is refused: one `error:` line naming the keys, non-zero exit.
- No collective on the default group waits for rank 0's data preparation: with a default-group timeout of a few
  seconds and a preparation on rank 0 made slower than that, the run completes (the other ranks wait on the gloo
  control group, whose timeout is long).

Tiny model (2 layers x 32, vocabulary 384, 32 tokens), fp32, the first 60,000 characters of tinyshakespeare.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import yaml

from transformer_nb.checkpoint import checkpoint_name
from transformer_nb.config import Config, ConfigError, DataConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
SEQ, STEPS = 32, 2
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}

TRAIN = textwrap.dedent('''
    import os, sys, warnings
    warnings.simplefilter('ignore')
    from transformer_nb.cli import train_main
    sys.exit(train_main(['--config', sys.argv[1]]))
''')

# the default group made by the script with a short timeout; rank 0's preparation made slower than it
SLOW_PREPARE = textwrap.dedent('''
    import datetime, os, sys, time, warnings
    warnings.simplefilter('ignore')
    import torch.distributed as dist
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=float(os.environ['PG_TIMEOUT'])))
    import transformer_nb.run as run
    real = run.prepare
    def slow(*args, **kw):
        if dist.get_rank() == 0: time.sleep(float(os.environ['PREPARE_DELAY']))
        if dist.get_rank() == 0 and os.environ.get('PREPARE_FAILS'):
            from transformer_nb.sources import CorpusError
            raise CorpusError('corpus.txt: not valid UTF-8 (a planted failure)')
        return real(*args, **kw)
    run.prepare = slow
    from transformer_nb.config import load_config
    from transformer_nb.trainer import Trainer
    r = Trainer(load_config(sys.argv[1]), show_progress=False).fit()
    os.write(1, f"RESULT {r['step']}\\n".encode())
    dist.destroy_process_group()
''')


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
    from transformer_nb.tokenizer import train_bbpe
    d = tmp_path_factory.mktemp('batch')
    (d / 'corpus.txt').write_text(SHAKESPEARE.read_text(encoding='utf-8')[:60_000], encoding='utf-8')
    train_bbpe([d / 'corpus.txt'], d / 'tok', vocab_size=384, show_progress=False)
    (d / 'train.py').write_text(TRAIN)
    (d / 'slow_prepare.py').write_text(SLOW_PREPARE)
    return d


def make_config(tmp: Path, name: str, batch: int, accum: int, **data) -> Path:
    d = {'model': {'hidden_size': 32, 'intermediate_size': 64, 'num_layers': 2, 'num_attention_heads': 2,
                   'max_position_embeddings': SEQ},
         'tokenizer': {'tokenizer_json': str(tmp / 'tok' / 'tokenizer.json')},
         'data': {'train_shards': [str(tmp / 'corpus.txt')], 'batch_size': batch,
                  'gradient_accumulation_steps': accum, 'cache_dir': str(tmp / 'data'), **data},
         'optimizer': {'learning_rate': 3e-3},
         'scheduler': {'strategy': 'constant', 'total_steps': STEPS},
         'runtime': {'seed': 3, 'log_every_n_steps': 1, 'device': 'cpu',
                     'checkpoint': {'directory': str(tmp / name / 'checkpoints'), 'every_n_steps': STEPS},
                     'evaluation': {'every_n_steps': None}, 'logging': {'tensorboard': None}}}
    (tmp / f'{name}.yaml').write_text(yaml.safe_dump(d))   # the keys as written: no defaults filled in
    return tmp / f'{name}.yaml'


def launch(tmp: Path, script: str, cfg: Path, nproc: int, env=None) -> subprocess.CompletedProcess:
    cmd = ([sys.executable, str(tmp / script)] if nproc == 1 else
           [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(nproc),
            str(tmp / script)])
    return subprocess.run(cmd + [str(cfg)], capture_output=True, text=True, env=env or ENV, timeout=240)


def losses(run: Path) -> list[float]:
    rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    return [r['loss'] for r in rows if r['kind'] == 'train']


# --- the rule, in one process ------------------------------------------------------------------------------------

def test_the_global_batch_does_not_depend_on_the_process_count():
    c = Config(data=DataConfig(batch_size=32, gradient_accumulation_steps=2))
    assert c.global_batch_size == 32
    assert [c.micro_batch_size(w) * 2 * w for w in (1, 2, 4, 8, 16)] == [32] * 5
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        old = Config(data=DataConfig(batch_size=4, gradient_accumulation_steps=8))   # original-style: 4 per pass
        assert old.global_batch_size == 32
        assert [old.micro_batch_size(w) for w in (1, 2, 4)] == [4, 2, 1]


@pytest.mark.parametrize('batch, accum, world, numbers', [
    (2, 1, 4, '(data.batch_size = 2) can\'t be split over data.gradient_accumulation_steps x processes (1 x 4 = 4)'),
    (8, 1, 16, '(1 x 16 = 16)'),
    (2, 32, 4, 'data.batch_size x data.gradient_accumulation_steps = 2 x 32 = 64) can\'t be split over '
               'data.gradient_accumulation_steps x processes (32 x 4 = 128)'),
])
def test_a_batch_the_processes_cannot_split_is_refused(batch, accum, world, numbers):
    c = Config(data=DataConfig(batch_size=batch, gradient_accumulation_steps=accum))
    with pytest.raises(ConfigError) as e, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        c.micro_batch_size(world)
    assert numbers in str(e.value) and '\n' not in str(e.value)


def test_an_explicit_micro_batch_must_agree(tmp_path):
    c = Config(data=DataConfig(batch_size=16, gradient_accumulation_steps=2, micro_batch_size=4))
    assert c.micro_batch_size(2) == 4
    with pytest.raises(ConfigError, match=r'data.micro_batch_size \(4\) disagrees .* that is 8 per process'):
        c.micro_batch_size(1)
    # a micro-batch that fits no process count is refused when the file is read
    f = tmp_path / 'c.yaml'
    f.write_text('data: {batch_size: 16, gradient_accumulation_steps: 2, micro_batch_size: 3}\n')
    with pytest.raises(ConfigError, match=r'c.yaml: data.micro_batch_size \(3\) x data.gradient_accumulation_steps '
                                          r'\(2\) must divide the global batch \(16\)'):
        load_config(f)


# --- across processes ------------------------------------------------------------------------------------------

def test_single_process_tools_take_an_explicit_micro_batch(tmp_path):
    """A config that fixes data.micro_batch_size for one process count still runs in the one-process tools
    (estimate-memory, bench, lr_find, the quality check): they take its micro-batch."""
    c = Config(data=DataConfig(batch_size=64, gradient_accumulation_steps=2, micro_batch_size=4))
    assert c.micro_batch_size() == 4 and c.world_sizes(8) == [8] and c.world_sizes(4) == []
    assert Config(data=DataConfig(batch_size=12, gradient_accumulation_steps=2)).world_sizes(8) == [1, 2, 3, 6]
    f = tmp_path / 'c.yaml'
    f.write_text('model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_layers: 1, num_attention_heads: 2}\n'
                 'data: {batch_size: 64, gradient_accumulation_steps: 2, micro_batch_size: 4, sequence_length: 16}\n')
    from faults import argv_of
    r = subprocess.run([*argv_of('tnb', 'estimate-memory'), '--config', str(f)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'ddp x8, micro-batch 4 x 16' in r.stdout and 'error' not in r.stdout + r.stderr


def test_same_tokens_per_step_on_1_2_and_4_processes(tmp):
    "batch 4 x 8 accumulation steps: 32 sequences x 32 tokens per optimizer step, on any number of processes."
    states, curves = {}, {}
    for nproc in (1, 2, 4):
        name = f'same-{nproc}'
        p = launch(tmp, 'train.py', make_config(tmp, name, batch=4, accum=8), nproc)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert f'global batch 32 sequences = micro-batch {4 // nproc} x 8 accumulation step(s) x {nproc}' in p.stdout
        states[nproc] = json.loads((tmp / name / 'checkpoints' / checkpoint_name(STEPS) / 'trainer_state.json')
                                   .read_text())
        curves[nproc] = losses(tmp / name)
    per_step = {n: s['tokens_seen'] / s['step'] for n, s in states.items()}
    print('tokens per optimizer step by process count:', per_step)
    assert per_step == {1: 32 * SEQ, 2: 32 * SEQ, 4: 32 * SEQ}
    for n, s in states.items():
        assert (s['step'], s['world_size'], s['global_batch_size']) == (STEPS, n, 32)
        assert s['sampler']['batch_size'] * s['sampler']['world_size'] * 8 == 32      # what each rank really drew
    # the same sequences per step: the same losses, to float rounding (see test_ddp.py)
    assert max(abs(a - b) for n in (2, 4) for a, b in zip(curves[1], curves[n])) <= 1e-5


def test_an_unsplittable_batch_is_refused_across_processes(tmp):
    "batch_size 2 on 4 processes used to run with a global batch of 8 (micro-batch 2 each); now it is refused."
    p = launch(tmp, 'train.py', make_config(tmp, 'refused', batch=2, accum=1), 4)
    assert p.returncode != 0
    errors = [l for l in p.stderr.splitlines() if l.startswith('error: ')]
    assert errors and all(l == errors[0] for l in errors), p.stderr[-3000:]
    assert "the global batch (data.batch_size = 2) can't be split over data.gradient_accumulation_steps x processes " \
           "(1 x 4 = 4)" in errors[0]
    assert not (tmp / 'refused' / 'checkpoints').exists()


def test_no_default_group_collective_waits_for_rank0_preparation(tmp):
    "Rank 0 prepares for 8 s; the default group times out after 3 s; the others wait on the control group."
    cfg = make_config(tmp, 'slow', batch=4, accum=1, cache_dir=str(tmp / 'slow-data'))   # nothing cached yet
    p = launch(tmp, 'slow_prepare.py', cfg, 2, env={**ENV, 'PG_TIMEOUT': '3', 'PREPARE_DELAY': '8'})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count(f'RESULT {STEPS}') == 2


def test_rank0_preparation_failure_reaches_every_rank(tmp):
    "Rank 0's preparation fails: every rank stops with its message, at once (none waits out a timeout)."
    cfg = make_config(tmp, 'fails', batch=4, accum=1, cache_dir=str(tmp / 'fails-data'))
    t0 = time.time()
    p = launch(tmp, 'slow_prepare.py', cfg, 2, env={**ENV, 'PG_TIMEOUT': '600', 'PREPARE_DELAY': '0',
                                                    'PREPARE_FAILS': '1'})
    assert p.returncode != 0 and time.time() - t0 < 120
    out = p.stdout + p.stderr
    assert 'rank 0 could not prepare the token shards: corpus.txt: not valid UTF-8' in out, out[-3000:]
