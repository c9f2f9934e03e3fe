"""Checkpoint safety: atomic re-saves, one hash per file, locks and safe DCP metadata.

- A: re-saving a DCP step (`publish_checkpoint`) and `export_hf(overwrite=True)` keep a complete old folder at every
     failure point (the new folder's rename fails; the restoring rename fails too, as after a crash), and the
     leftover clean-up never deletes the only copy.
- B: a 2-rank resume hashes one checkpoint's bytes (rank 0 only) and the token shards once; saving with pruning
     hashes no older checkpoint; finding + loading a checkpoint for generation (or export) hashes each file once;
     token shards are not hashed by the process that wrote them and once per process otherwise.
- C: the token-cache lock is a `filelock` file; DCP's `.metadata` is opened once per load; a crafted `.distcp`
     value (a pickle that runs code) is refused without running.
"""
import errno
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import transformer_nb.checkpoint as ck
import transformer_nb.data as data_mod
from faults import _Payload, config_dict, make_assets, train_in_process, write_config
from transformer_nb.checkpoint import (CheckpointError, checkpoint_name, find_checkpoint, latest_checkpoint,
                                       load_checkpoint, load_for_generation, read_manifest, remove_leftovers,
                                       save_checkpoint, save_dcp_checkpoint, verify_checkpoint)

ROOT = Path(__file__).resolve().parent.parent


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(11, 8), nn.Linear(8, 11)
        self.vocab_size = 11

    def forward(self, x): return self.out(self.emb(x))


def _trained(seed=0):
    torch.manual_seed(seed)
    m = _Tiny()
    o = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(2):
        loss = m(torch.randint(0, 11, (2, 5))).sum()
        o.zero_grad(); loss.backward(); o.step()
    return m, o


def _digest(folder: Path) -> dict:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob('*')) if f.is_file()}


class _Renames:
    "os.rename that fails for the renames whose source name starts with one of `prefixes` (the n-th such call on)."
    def __init__(self, monkeypatch, *failing_sources, times=1):
        self.real, self.failing, self.left = os.rename, failing_sources, times
        monkeypatch.setattr(os, 'rename', self)

    def __call__(self, src, dst, *a, **k):
        if self.left > 0 and Path(src).name.startswith(self.failing):
            self.left -= 1
            raise OSError(errno.ENOSPC, 'No space left on device (simulated)')
        return self.real(src, dst, *a, **k)


# --- A: atomic replacement ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('how', ['exchange-fails', 'second-rename-fails', 'crash-between-renames'])
def test_dcp_resave_keeps_a_complete_step_at_every_failure(tmp_path, monkeypatch, how):
    root = tmp_path / 'checkpoints'
    m, o = _trained(0)
    old = save_dcp_checkpoint(root, 3, m, o, {'tokens_seen': 1})
    before = _digest(old)
    m2, o2 = _trained(1)
    if how == 'exchange-fails':       # the atomic swap itself fails (an I/O error)
        monkeypatch.setattr(ck, '_SWAP', lambda a, b: errno.EIO)
    else:                             # no swap on this platform: rename the old away, then the new into place
        monkeypatch.setattr(ck, '_SWAP', None)
        if how == 'second-rename-fails':     # the new folder's rename into place fails
            _Renames(monkeypatch, '.tmp-')
        else:                                # ... and so does the old folder's way back, as if the process died
            monkeypatch.setattr(os, 'rename', _FailOnce(os.rename, root / checkpoint_name(3)))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises((CheckpointError, OSError)):
            save_dcp_checkpoint(root, 3, m2, o2, {'tokens_seen': 2})
    monkeypatch.undo()
    final = root / checkpoint_name(3)
    if how == 'crash-between-renames':        # the old folder sits under its .old- name until the next clean-up
        assert not final.exists() and [p.name for p in root.iterdir() if p.name.startswith('.old-')]
    else:
        assert _digest(final) == before and verify_checkpoint(final) == []
    remove_leftovers(root)                    # (what the next save or a resume runs first)
    assert _digest(final) == before and verify_checkpoint(final) == []
    assert latest_checkpoint(root) == final
    assert [p.name for p in root.iterdir()] == [checkpoint_name(3)]


class _FailOnce:
    "os.rename failing the new folder's rename into `final` and then the old folder's way back (a crash between)."
    def __init__(self, real, final: Path):
        self.real, self.final, self.fails = real, str(final), 2

    def __call__(self, src, dst, *a, **k):
        if self.fails and os.fspath(dst) == self.final:
            self.fails -= 1
            raise OSError(errno.ENOSPC, 'No space left on device (simulated)')
        return self.real(src, dst, *a, **k)


@pytest.mark.parametrize('how', ['exchange-fails', 'second-rename-fails'])
def test_export_hf_force_failure_keeps_the_old_export(tmp_path, monkeypatch, how):
    from transformer_nb.config import ModelConfig
    from transformer_nb.hf import export_hf
    from transformer_nb.model import DecoderModel
    cfg = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_attention_heads=2,
                      max_position_embeddings=16)
    torch.manual_seed(0)
    out = export_hf(DecoderModel(cfg, 40), None, tmp_path / 'export')
    before = _digest(out)
    torch.manual_seed(1)
    if how == 'exchange-fails':
        monkeypatch.setattr(ck, '_SWAP', lambda a, b: errno.EIO)
    else:
        monkeypatch.setattr(ck, '_SWAP', None)
        _Renames(monkeypatch, '.tmp-export-')
    with pytest.raises(OSError):
        export_hf(DecoderModel(cfg, 40), None, out, overwrite=True)
    monkeypatch.undo()
    assert _digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ['export']


# --- B: hash once ------------------------------------------------------------------------------------------------

class _HashCounter:
    "Counts the files `sha256_file` reads, in every transformer_nb module that imported it."
    def __init__(self, monkeypatch):
        import transformer_nb.base as base
        self.real, self.paths = base.sha256_file, []
        for name, mod in list(sys.modules.items()):
            if name.startswith('transformer_nb') and getattr(mod, 'sha256_file', None) is self.real:
                monkeypatch.setattr(mod, 'sha256_file', self)

    def __call__(self, path, *a, **k):
        self.paths.append(Path(path).resolve())
        return self.real(path, *a, **k)

    def under(self, folder: Path) -> list[Path]:
        return [p for p in self.paths if folder.resolve() in p.parents]


def _ckpt_bytes(c: Path) -> int:
    return sum(e['size'] for e in read_manifest(c)['files'].values())


def _backdate(folder: Path, seconds: float = 60):
    "Give every file an mtime in the past: an old checkpoint (hashes of files just written are not trusted)."
    t = time.time() - seconds
    for f in folder.rglob('*'):
        if f.is_file(): os.utime(f, (t, t))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A tiny single-process run: checkpoints at steps 2 and 4 (safetensors), everything backdated."
    d = tmp_path_factory.mktemp('hashonce')
    assets = make_assets(d / 'assets')
    cfg = write_config(d / 'train.yaml', config_dict(assets, d / 'run', hidden=32, steps=4, every=2, keep=3))
    train_in_process(cfg)
    _backdate(d)
    return {'dir': d, 'assets': assets, 'cfg': cfg, 'ckpts': d / 'run' / 'checkpoints'}


RESUME = textwrap.dedent('''
    import json, os, sys, warnings
    warnings.simplefilter('ignore')
    from transformer_nb.config import load_config
    from transformer_nb.trainer import Trainer
    import transformer_nb.base as base
    real, hashed = base.sha256_file, []
    def counting(path, *a, **k):
        hashed.append(os.path.realpath(path))
        return real(path, *a, **k)
    for name, mod in list(sys.modules.items()):
        if name.startswith('transformer_nb') and getattr(mod, 'sha256_file', None) is real: mod.sha256_file = counting
    t = Trainer(load_config(sys.argv[1]), resume=True, show_progress=False)
    step = t.state.step
    t._completed = True
    t.close()
    with open(sys.argv[2] + '.' + os.environ.get('RANK', '0'), 'w') as f: json.dump({'step': step, 'hashed': hashed}, f)
''')


def test_two_rank_resume_hashes_one_checkpoint_once(run):
    d = run['dir']
    (d / 'resume.py').write_text(RESUME)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        str(d / 'resume.py'), str(run['cfg']), str(d / 'hashed')],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ranks = [json.loads((d / f'hashed.{r}').read_text()) for r in (0, 1)]
    assert [r['step'] for r in ranks] == [4, 4]
    newest = run['ckpts'] / checkpoint_name(4)
    ckpts, cache = run['ckpts'].resolve(), Path(run['assets']['cache']).resolve()
    in_ckpts = [[Path(h) for h in r['hashed'] if ckpts in Path(h).parents] for r in ranks]
    in_cache = [[Path(h) for h in r['hashed'] if cache in Path(h).parents] for r in ranks]
    hashed = sum(f.stat().st_size for f in in_ckpts[0] + in_ckpts[1])
    print(f"bytes hashed at a 2-rank resume: {hashed:,} (one checkpoint: {_ckpt_bytes(newest):,}); "
          f"files per rank {[len(x) for x in in_ckpts]}")
    assert hashed == _ckpt_bytes(newest)
    assert in_ckpts[1] == [] and all(newest.resolve() in f.parents for f in in_ckpts[0])
    # the token shards: verified once, by rank 0 (a fresh process), and not by rank 1
    shards = sorted(f.resolve() for f in cache.rglob('*.bin'))
    assert sorted(in_cache[0]) == shards and in_cache[1] == []


def test_saving_with_pruning_hashes_no_older_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / 'checkpoints'
    m, o = _trained(0)
    for step in (1, 2, 3):
        save_checkpoint(root, step, m, o, {}, max_keep=None)
    count = _HashCounter(monkeypatch)
    save_checkpoint(root, 4, m, o, {}, max_keep=2)
    assert [c.name for c in ck.list_checkpoints(root)] == [checkpoint_name(3), checkpoint_name(4)]
    # the only files read for a hash are the new checkpoint's own (read back once after writing)
    assert count.paths and all(f'.tmp-{checkpoint_name(4)}-' in str(p) for p in count.paths), count.paths
    assert len(count.paths) == len(set(count.paths))


def test_finding_and_loading_for_generation_hashes_each_file_once(run, monkeypatch):
    getattr(ck, '_KNOWN_SHA256', {}).clear()                          # as in a fresh `tnb generate` process
    count = _HashCounter(monkeypatch)
    c = find_checkpoint(run_dir=run['dir'] / 'run')
    model, tok, cfg = load_for_generation(c, device='cpu')
    hashed = count.under(c)
    print(f"generate: {len(hashed)} file(s) hashed, {len(read_manifest(c)['files'])} in the manifest")
    assert sorted(hashed) == sorted((c / rel).resolve() for rel in read_manifest(c)['files'])


def test_export_checkpoint_hashes_each_file_once(run, tmp_path, monkeypatch):
    from transformer_nb.hf import export_checkpoint
    getattr(ck, '_KNOWN_SHA256', {}).clear()
    count = _HashCounter(monkeypatch)
    c = run['ckpts'] / checkpoint_name(4)
    export_checkpoint(c, tmp_path / 'hf')
    assert sorted(count.under(c)) == sorted((c / rel).resolve() for rel in read_manifest(c)['files'])


def test_a_file_changed_after_it_was_hashed_is_hashed_again(tmp_path):
    m, o = _trained(0)
    c = save_checkpoint(tmp_path, 1, m, o, {})
    _backdate(c)
    assert verify_checkpoint(c) == []                  # hashed now, and remembered
    f = c / 'optimizer.safetensors'
    b = bytearray(f.read_bytes()); b[-3] ^= 1; f.write_bytes(bytes(b))    # same size, new mtime
    assert any('sha256 mismatch' in p for p in verify_checkpoint(c))


def test_token_shards_hashed_once_per_process_not_by_their_writer(run, tmp_path, monkeypatch):
    from transformer_nb.data import prepare
    count = _HashCounter(monkeypatch)
    kw = dict(cache_dir=tmp_path / 'cache', show_progress=False, verbose=False)
    a = prepare([run['assets']['corpus']], run['assets']['tok'], **kw)
    prepare([run['assets']['corpus']], run['assets']['tok'], **kw)
    assert count.under(a.dir) == []                    # the writer hashed them while writing
    monkeypatch.setattr(data_mod, '_VERIFIED', set())  # a new process
    monkeypatch.setattr(data_mod, '_WRITTEN', set())
    prepare([run['assets']['corpus']], run['assets']['tok'], **kw)
    prepare([run['assets']['corpus']], run['assets']['tok'], **kw)
    assert sorted(count.under(a.dir)) == sorted(f.resolve() for f in a.dir.glob('*.bin'))


# --- C: locks and safe metadata ----------------------------------------------------------------------------------

def test_token_cache_lock_is_a_filelock(tmp_path):
    from filelock import FileLock, Timeout
    with data_mod._locked(tmp_path):
        with pytest.raises(Timeout):
            FileLock(str(tmp_path / '.prepare.lock')).acquire(timeout=0.05)
    with FileLock(str(tmp_path / '.prepare.lock'), timeout=0.05): pass   # released


def _opens(path_part: str):
    "A list that audit events append every opened path containing `path_part` to (while `on`)."
    seen, state = [], {'on': False}
    def hook(event, args):
        if state['on'] and event == 'open' and args and path_part in os.fsdecode(args[0] if not isinstance(
                args[0], int) else ''):
            seen.append(args[0])
    sys.addaudithook(hook)
    return seen, state


def test_dcp_metadata_is_read_once_per_load(tmp_path):
    m, o = _trained(0)
    c = save_dcp_checkpoint(tmp_path / 'checkpoints', 3, m, o, {})
    seen, state = _opens('.metadata')
    m2, o2 = _trained(1)
    state['on'] = True
    try:
        load_checkpoint(c, m2, o2, verify=False)
        n_load = len(seen)
        ck.checkpoint_model_tensors(c)
        n_tensors = len(seen) - n_load
    finally: state['on'] = False
    assert (n_load, n_tensors) == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_crafted_distcp_value_cannot_run_code(tmp_path):
    import torch.distributed.checkpoint as dcp
    m, o = _trained(0)
    marker = tmp_path / 'pwned'
    sd = ck.dcp_state_dict(m, o)
    for g in sd['optim']['param_groups']: g['lr'] = _Payload(marker)   # unpickling it runs exec(...)
    tmp = ck.stage_checkpoint(tmp_path / 'checkpoints', 3)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(tmp / ck.DCP_DIR)), no_dist=True)
    c = ck.publish_checkpoint(tmp, 3, {})
    assert verify_checkpoint(c) == []                   # a well-formed checkpoint, hashes and all
    m2, o2 = _trained(1)
    with pytest.raises(CheckpointError, match='refused'):
        load_checkpoint(c, m2, o2)
    assert not marker.exists()


def test_a_checkpoint_that_does_not_fit_changes_nothing(tmp_path):
    "Optimizer state that does not fit: refused before the model's weights are touched."
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    opt = torch.optim.AdamW(a.parameters())
    a(torch.randn(2, 4)).sum().backward(); opt.step()
    path = ck.save_checkpoint(tmp_path, 1, a, opt, {'epoch': 0})
    before = {k: v.clone() for k, v in b.state_dict().items()}
    two_groups = torch.optim.AdamW([{'params': [b.weight]}, {'params': [b.bias]}])
    with pytest.raises(CheckpointError, match='does not fit this optimizer'):
        ck.load_checkpoint(path, b, two_groups)
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())
    assert ck.load_checkpoint(path, b, torch.optim.AdamW(b.parameters()))['epoch'] == 0
    assert torch.equal(b.weight, a.weight)


def test_leftovers_of_another_machine_are_not_judged_by_a_local_pid(tmp_path):
    """A moved-aside step whose writer ran on another machine is put back, even where its pid is alive here (a pid
    means something on its own machine only); a live local writer's folders are left alone."""
    live = os.getppid()                                                     # a pid that is alive on this machine
    other = ck._HOST[::-1] if ck._HOST[::-1] != ck._HOST else '0' * 8
    (tmp_path / f'.old-step_000000000005-h{other}-{live}-abcd1234').mkdir()
    (tmp_path / f'.tmp-step_000000000006-h{ck._HOST}-{live}-abcd1234').mkdir()
    (tmp_path / f'.tmp-step_000000000007-{live}-abcd1234').mkdir()           # the older name, without a host
    ck.remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f'.tmp-step_000000000006-h{ck._HOST}-{live}-abcd1234', f'.tmp-step_000000000007-{live}-abcd1234',
        'step_000000000005']
