"""Sharded training (FSDP2) and distributed checkpoints (DCP), 2 CPU processes with gloo (issue 13).

- FSDP with 2 ranks against one process with the same global batch of 8 sequences, 20 steps: per-step
  loss and final weights within 1e-5 (measured ~1e-6); once with plain steps and background (async)
  DCP saves, once with gradient accumulation 2 (reduce-scattered at each micro-step: gradients stay sharded) and
  activation checkpointing. Why they can match: the model is built on the meta device and each rank
  replays the initialisation of a plain build, keeping its rows, so both start from the same weights;
  the ranks' micro-batches together are exactly the single process's batch (see test_ddp.py).
- Resume across world sizes: 10 steps on 2 ranks, then 10 more in 1 process, and the reverse, equal the
  uninterrupted run within 1e-5 (the sampler's state is global: same global batch = same position).
- Multi-node: two `torchrun --nnodes 2 --node-rank 0|1` launchers rendezvous over 127.0.0.1 (c10d);
  the run matches one process.
- SIGKILL of one rank while an async save is being written: the previous checkpoint stays the newest
  valid one, and training resumes from it.
- A DCP checkpoint exported with `tnb export-hf` gives the logits of the model in transformers; `generate`
  loads it; DCP's pickled `.metadata` is refused when it names anything but DCP's own classes.

Tiny model (2 layers x 32, vocab 384, 32 tokens), fp32, the first 60,000 characters of tinyshakespeare.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from transformer_nb.checkpoint import (CheckpointError, check_dcp_metadata, checkpoint_model_tensors, checkpoint_name,
                                       latest_checkpoint, list_checkpoints, verify_checkpoint)
from transformer_nb.config import config_from_dict, save_config

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
STEPS, TOL = 20, 1e-5
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}

SCRIPT = textwrap.dedent('''
    import os, sys, time, warnings
    warnings.simplefilter('ignore')
    if os.environ.get('SLOW_SAVE_MARKER'):        # the SIGKILL test: announce, then slow down the 2nd and later writes
        import torch.distributed.checkpoint as dcp
        real, calls = dcp.FileSystemWriter.write_data, []
        def slow(self, plan, planner):
            calls.append(1)
            if len(calls) >= 2:
                open(os.environ['SLOW_SAVE_MARKER'] + '.' + os.environ.get('RANK', '0'), 'w').write(str(os.getpid()))
                time.sleep(8)
            return real(self, plan, planner)
        dcp.FileSystemWriter.write_data = slow
    from transformer_nb.config import load_config
    from transformer_nb.trainer import Trainer
    r = Trainer(load_config(sys.argv[1]), resume='--resume' in sys.argv, show_progress=False).fit()
    os.write(1, f"RESULT {r['step']}\\n".encode())   # one write: the ranks share stdout
''')


def make_config(tmp: Path, name: str, steps: int = STEPS, run: str | None = None, **over) -> Path:
    d = {'model': {'hidden_size': 32, 'intermediate_size': 64, 'num_layers': 2, 'num_attention_heads': 2,
                   'max_position_embeddings': 32},
         'tokenizer': {'tokenizer_json': str(tmp / 'tok' / 'tokenizer.json')},
         'data': {'train_shards': [str(tmp / 'corpus.txt')], 'batch_size': 8, 'cache_dir': str(tmp / 'data')},
         'optimizer': {'learning_rate': 3e-3},
         'scheduler': {'strategy': 'constant', 'warmup_steps': 2, 'total_steps': steps},
         'runtime': {'seed': 3, 'log_every_n_steps': 5, 'device': 'cpu', 'distributed': 'fsdp',
                     'checkpoint': {'directory': str(tmp / (run or name) / 'checkpoints'), 'every_n_steps': 10},
                     'evaluation': {'every_n_steps': 10, 'max_batches': 1}, 'logging': {'tensorboard': None}}}
    for key, value in over.items():
        *path, last = key.split('__')
        t = d
        for k in path: t = t.setdefault(k, {})
        t[last] = value
    save_config(config_from_dict(d), tmp / f'{name}.yaml')
    return tmp / f'{name}.yaml'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def launch(tmp: Path, cfg: Path, nproc: int, *extra, env=None, wait=True):
    cmd = ([sys.executable, str(tmp / 'train.py')] if nproc == 1 else
           [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc-per-node', str(nproc),
            '--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{free_port()}', str(tmp / 'train.py')])
    cmd += [str(cfg), *extra]
    if not wait: return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or ENV)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def losses(run: Path) -> list[float]:
    rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    rows = [r for r in rows if r['kind'] == 'train']
    assert [r['step'] for r in rows] == list(range(1, len(rows) + 1))
    return [r['loss'] for r in rows]


def weights(run: Path, step: int = STEPS) -> dict:
    return checkpoint_model_tensors(run / 'checkpoints' / checkpoint_name(step))


def assert_matches(run: Path, ref: Path, steps: int = STEPS):
    a, b = losses(run), losses(ref)[:steps]
    assert len(a) == steps, len(a)
    worst = max(abs(x - y) for x, y in zip(a, b))
    wa, wb = weights(run, steps), weights(ref, steps)
    wworst = max((wa[k] - wb[k]).abs().max().item() for k in wb)
    print(f'{run.name}: max |loss diff| {worst:.2e}, max |weight diff| {wworst:.2e}')
    assert worst <= TOL and wa.keys() == wb.keys() and wworst <= TOL


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
    from transformer_nb.tokenizer import train_bbpe
    tmp = tmp_path_factory.mktemp('fsdp')
    (tmp / 'corpus.txt').write_text(SHAKESPEARE.read_text(encoding='utf-8')[:60_000], encoding='utf-8')
    train_bbpe([tmp / 'corpus.txt'], tmp / 'tok', vocab_size=384, show_progress=False)
    (tmp / 'train.py').write_text(SCRIPT)
    return tmp


@pytest.fixture(scope='module')
def single(tmp):
    "The reference: one process (a plain model, DCP checkpoints at steps 10 and 20)."
    launch(tmp, make_config(tmp, 'single'), 1)
    return tmp / 'single'


def test_fsdp_matches_one_process_with_async_saves(tmp, single):
    out = launch(tmp, make_config(tmp, 'fsdp', runtime__checkpoint__async_save=True), 2)
    assert out.count('RESULT 20') == 2 and '2 process(es) (FSDP)' in out
    assert_matches(tmp / 'fsdp', single)
    cks = list_checkpoints(tmp / 'fsdp' / 'checkpoints')
    assert [c.name for c in cks] == [checkpoint_name(10), checkpoint_name(20)]
    for c in cks:
        assert verify_checkpoint(c) == []
        assert sorted(p.name for p in (c / 'dcp').iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
        files = json.loads((c / 'manifest.json').read_text())['files']
        assert {'dcp/.metadata', 'dcp/__0_0.distcp', 'dcp/__1_0.distcp', 'trainer_state.json'} <= set(files)
    assert not list((tmp / 'fsdp' / 'checkpoints').glob('.tmp-*'))


def test_fsdp_with_accumulation_and_activation_checkpointing(tmp, single):
    launch(tmp, make_config(tmp, 'acc', data__gradient_accumulation_steps=2, runtime__activation_checkpointing=True), 2)
    assert_matches(tmp / 'acc', single)


SHARDED_GRADS = textwrap.dedent('''
    import torch, torch.distributed as dist
    from transformer_nb.config import ModelConfig
    from transformer_nb.parallel import DistInfo, build_model, grad_sync
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    mc = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_attention_heads=2, max_position_embeddings=16)
    m = build_model(mc, 64, torch.device('cpu'), 'fsdp', DistInfo(rank, 2))
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(rank))
    with grad_sync(m, 'fsdp', last=False): m(ids, ids)[1].backward()   # a micro-step that is not the last
    # reduce-scattered already: each rank holds the gradient of its own rows only, as a sharded DTensor
    ok = all(p.grad is not None and p.grad.to_local().numel() == p.to_local().numel() for p in m.parameters())
    print(f'RANK{rank} SHARDED {ok}', flush=True)
    dist.barrier()                  # both ranks have printed
    # no teardown: gloo can abort in destroy_process_group while FSDP's last reduce-scatter of a micro-step that
    # no optimizer step followed is still being cleaned up (it did, on a loaded machine); the result is printed
    import os; os._exit(0)
''')


def test_fsdp_accumulation_keeps_gradients_sharded(tmp):
    "Between micro-steps each rank holds only its shard's gradients (no full, unsharded gradients kept)."
    (tmp / 'sharded_grads.py').write_text(SHARDED_GRADS)
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--rdzv-backend', 'c10d',
                        '--rdzv-endpoint', f'127.0.0.1:{free_port()}', str(tmp / 'sharded_grads.py')],
                       capture_output=True, text=True, env=ENV, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert 'RANK0 SHARDED True' in p.stdout and 'RANK1 SHARDED True' in p.stdout, p.stdout


@pytest.mark.parametrize('first,then', [(2, 1), (1, 2)])
def test_resume_across_world_sizes(tmp, single, first, then):
    name = f'resume{first}{then}'
    launch(tmp, make_config(tmp, name + 'a', steps=10, run=name), first)
    out = launch(tmp, make_config(tmp, name + 'b', run=name), then, '--resume')
    assert f'resumed from {tmp / name / "checkpoints" / checkpoint_name(10)}' in out
    assert_matches(tmp / name, single)


def test_two_nodes_match_one_process(tmp, single):
    "Two launchers, one per 'node' (--nnodes 2 --node-rank 0|1), meeting at a c10d rendezvous on 127.0.0.1."
    cfg, port = make_config(tmp, 'nodes', steps=10), free_port()
    procs = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node-rank', str(r),
                               '--nproc-per-node', '1', '--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}',
                               '--rdzv-id', 'tnb-test', str(tmp / 'train.py'), str(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV) for r in (0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), '\n'.join(o[-2000:] for o in outs)
    assert '2 process(es) (FSDP)' in outs[0] + outs[1]
    assert_matches(tmp / 'nodes', single, steps=10)


def test_sigkill_during_async_save_keeps_previous_checkpoint(tmp):
    run = tmp / 'killed'
    cfg = make_config(tmp, 'killed', steps=40, run='killed', runtime__checkpoint__async_save=True,
                      runtime__checkpoint__every_n_steps=5, runtime__evaluation__every_n_steps=None)
    marker = tmp / 'saving'
    p = launch(tmp, cfg, 2, env={**ENV, 'SLOW_SAVE_MARKER': str(marker)}, wait=False)
    try:
        deadline = time.time() + 120
        while not Path(f'{marker}.1').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.2)
        assert Path(f'{marker}.1').exists(), p.communicate(timeout=30)[0][-3000:]
        os.kill(int(Path(f'{marker}.1').read_text()), signal.SIGKILL)          # rank 1 dies inside its write
        p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill(); p.communicate()
    assert p.returncode != 0
    cks = run / 'checkpoints'
    assert list(cks.glob('.tmp-step_000000000010-*'))                      # the half-written save is left aside...
    assert latest_checkpoint(cks) == cks / checkpoint_name(5)                 # ...and the one before is the newest valid
    out = launch(tmp, make_config(tmp, 'killed2', steps=10, run='killed'), 1, '--resume')
    assert f'resumed from {cks / checkpoint_name(5)}' in out and 'RESULT 10' in out
    assert not list(cks.glob('.tmp-*'))                                       # leftovers of dead writers are removed


def test_dcp_checkpoint_exports_to_transformers_and_generates(tmp, single):
    transformers = pytest.importorskip('transformers')
    from transformer_nb.hf import export_checkpoint, hf_logits_diff
    from transformer_nb.checkpoint import load_for_generation
    from transformer_nb.generate import generate
    ck = tmp / 'single' / 'checkpoints' / checkpoint_name(STEPS)
    export_checkpoint(ck, tmp / 'hf')
    model, tok, _ = load_for_generation(ck, device='cpu')
    ids = torch.tensor([tok.encode('ROMEO:\nWhat light through yonder window breaks?').ids[:24]])
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    assert hf_logits_diff(model, tmp / 'hf', ids) < 1e-4
    assert generate(model, tok, 'ROMEO:', max_new_tokens=5, temperature=0.0)


def test_dcp_metadata_naming_foreign_code_is_refused(tmp, single):
    ck = tmp / 'single' / 'checkpoints' / checkpoint_name(10)
    check_dcp_metadata(ck / 'dcp' / '.metadata')                              # DCP's own metadata passes
    bad = tmp / 'evil.metadata'
    bad.write_bytes(b"cos\nsystem\n(S'touch /tmp/never'\ntR.")               # a protocol-0 pickle calling os.system
    with pytest.raises(CheckpointError, match='os.system, which is not DCP metadata'): check_dcp_metadata(bad)
    bad.write_bytes(b'\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.')
    with pytest.raises(CheckpointError, match='os.system, which is not DCP metadata'): check_dcp_metadata(bad)


def test_estimate_memory_command():
    from faults import argv_of
    exe = argv_of('tnb', 'estimate-memory')
    p = subprocess.run([*exe, '--config', str(ROOT / 'configs' / 'llama_1b.yaml'), '--world-size', '8'],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = {l.split(',')[0].strip(): l.split() for l in p.stdout.splitlines() if 'micro-batch' in l}
    fsdp, ddp = float(rows['fsdp x8'][-1]), float(rows['ddp x8'][-1])
    assert '1,100.0M parameters' in p.stdout and fsdp < 0.6 * ddp          # sharding halves (and more) the per-rank total
    # m3_medium's global batch of 6 can't be split over 8 processes: the comparison takes 6
    m3 = subprocess.run([*exe, '--config', str(ROOT / 'configs' / 'm3_medium.yaml'), '--vocab-size', '8000'],
                        capture_output=True, text=True, timeout=120)
    assert m3.returncode == 0, m3.stderr
    assert 'global batch 6 x 512' in m3.stdout and 'ddp x6, micro-batch 1 x 512' in m3.stdout
    # Muon does not run under FSDP: no FSDP row, and asking for one is refused
    mu = subprocess.run([*exe, '--config', str(ROOT / 'configs' / 'shakespeare_cpu_recipe.yaml'), '--vocab-size', '1024'],
                        capture_output=True, text=True, timeout=120)
    assert mu.returncode == 0 and 'ddp x8' in mu.stdout and 'fsdp' not in mu.stdout, mu.stdout + mu.stderr
    bad = subprocess.run([*exe, '--config', 'nope.yaml'], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and 'nope.yaml' in bad.stderr


def test_muon_is_refused_under_fsdp_and_its_state_round_trips_through_dcp(tmp):
    from transformer_nb.checkpoint import load_checkpoint, save_dcp_checkpoint
    from transformer_nb.config import load_config
    from transformer_nb.model import DecoderModel
    from transformer_nb.device import TrainingError
    from transformer_nb.optim import build_optimizer
    from transformer_nb.parallel import check_parallel
    cfg = load_config(make_config(tmp, 'muon', optimizer__algorithm='muon'))
    # just the settings check of a 2-process run, no process group
    with pytest.raises(TrainingError, match='optimizer.algorithm=muon with runtime.distributed=fsdp'): check_parallel(cfg, 2)
    # one process with the same config: no sharding, Muon runs, and its state goes through DCP and back
    torch.manual_seed(0)
    m = DecoderModel(cfg.model, 384); opt = build_optimizer(m, cfg.optimizer)
    ids = torch.randint(0, 384, (2, 16))
    for _ in range(2): _, loss = m(ids, ids); opt.zero_grad(); loss.backward(); opt.step()
    p = save_dcp_checkpoint(tmp / 'muon' / 'checkpoints', 2, m, opt, {})
    m2 = DecoderModel(cfg.model, 384); opt2 = build_optimizer(m2, cfg.optimizer)
    load_checkpoint(p, m2, opt2)
    for a, b in zip(opt.optimizers, opt2.optimizers):
        for pa, pb in zip(a.param_groups[0]['params'], b.param_groups[0]['params']):
            assert all(torch.equal(a.state[pa][k], b.state[pb][k]) for k in a.state[pa])
    _, la = m(ids, ids); _, lb = m2(ids, ids)
    assert la.item() == lb.item()
