"""Data and checkpoint integrity (issue 19). Each test here fails without its fix:

- item 1  test_every_tokenizer_form_survives_checkpoint_and_generate, test_copy_tokenizer_artifacts_copies_what_loads:
          a tokenizer given as `vocab.json`
          was copied into checkpoints as the bytes of vocab.json named tokenizer.json (unloadable).
- item 2  test_kill_while_resaving_a_step_keeps_a_valid_checkpoint: re-saving an existing step renamed the
          old folder away before the new one was in place; a kill in between left no step_N.
- item 4  test_fingerprint_covers_encode_special_tokens: two tokenizers that encode `<eos>` differently had
          the same fingerprint and shared a token cache.
- item 5  test_reused_shards_are_checked_by_hash, test_durable_writes_fsync_files_and_folders: a cached shard
          of the right size but wrong content was reused; shards and folders were not fsynced.
- item 6  test_original_style_micro_batch_config_trains: batch 2 x accumulation 4 (the original project's
          style) was refused although the docs called it valid.
"""
import hashlib
import os
import re
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from faults import (RESUMED_RE, Proc, command, config_dict, flip_byte, hook_dir, make_assets, pause_env,
                    train_in_process, write_config)
from transformer_nb.checkpoint import checkpoint_name, verify_checkpoint
from transformer_nb.config import load_config
from transformer_nb.data import prepare
from transformer_nb.tokenizer import build_from_artifacts, tokenizer_fingerprint


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp('integrity') / 'assets')


def sha(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()


# --- item 1 -----------------------------------------------------------------------------------------------------

def tokenizer_forms(assets) -> dict:
    "Every form a config may name its tokenizer in."
    tok = assets['tok']
    vm = assets['dir'] / 'only_vm'                 # the original project's layout: vocab.json + merges.txt only
    vm.mkdir(exist_ok=True)
    for n in ('vocab.json', 'merges.txt'): (vm / n).write_bytes((tok / n).read_bytes())
    return {'folder': {'tokenizer_json': str(tok)},
            'tokenizer.json': {'tokenizer_json': str(tok / 'tokenizer.json')},
            'vocab.json': {'tokenizer_json': str(tok / 'vocab.json')},
            'vocab+merges keys': {'vocab': str(vm / 'vocab.json'), 'merges': str(vm / 'merges.txt'),
                                  'special_tokens': ['<pad>', '<bos>', '<eos>']},
            'vocab+merges folder': {'tokenizer_json': str(vm)}}


def test_every_tokenizer_form_survives_checkpoint_and_generate(assets, tmp_path):
    from transformer_nb.checkpoint import load_for_generation
    from transformer_nb.generate import generate
    for name, section in tokenizer_forms(assets).items():
        run = tmp_path / re.sub(r'\W', '_', name)
        d = config_dict(assets, run, steps=2, every=2)
        d['tokenizer'] = section
        t = train_in_process(write_config(run / 'train.yaml', d))
        ck = run / 'checkpoints' / checkpoint_name(2)
        assert verify_checkpoint(ck) == [], name
        tok = build_from_artifacts(ck / 'tokenizer')
        assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(t.tokenizer), f"{name}: the copy is another tokenizer"
        model, tok2, _ = load_for_generation(ck, 'cpu')
        text = generate(model, tok2, 'KING.', max_new_tokens=4, temperature=0)
        assert isinstance(text, str), name


def test_copy_tokenizer_artifacts_copies_what_loads(assets, tmp_path):
    from transformer_nb.tokenizer import copy_tokenizer_artifacts, verify_tokenizer_artifacts
    for i, src in enumerate([assets['tok'], assets['tokenizer'], assets['tok'] / 'vocab.json', assets['tok'] / 'merges.txt']):
        copy_tokenizer_artifacts(src, tmp_path / str(i))
        assert verify_tokenizer_artifacts(tmp_path / str(i)) == [], src
        assert tokenizer_fingerprint(build_from_artifacts(tmp_path / str(i))) == tokenizer_fingerprint(build_from_artifacts(src)), src


# --- item 2 -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('how', ['exchange', 'fallback'])
def test_kill_while_resaving_a_step_keeps_a_valid_checkpoint(assets, tmp_path, how):
    """A run saved step_2; the same run is started again (no --resume, another learning rate) and SIGKILLed
    while its save of step 2 replaces the old step_2: with the atomic swap (right after it), or, where the
    platform has none, between the two renames of the fallback. A valid step_2 (old or new) must be what
    `train --resume` then takes."""
    run, n = tmp_path / 'run', checkpoint_name(2)
    ck = run / 'checkpoints' / n
    cfg = write_config(tmp_path / 'train.yaml', config_dict(assets, run, steps=2, every=2, keep=3))
    r = command('train', '--config', cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    old = sha(ck / 'model.safetensors')
    marker = tmp_path / 'paused.json'
    if how == 'exchange':
        env = pause_env(hook_dir(tmp_path / 'hook'), marker, 'exchange', src=rf'/checkpoints/\.tmp-{n}-[^/]+$',
                        dst=rf'/checkpoints/{n}$')
    else:
        env = pause_env(hook_dir(tmp_path / 'hook'), marker, 'rename', src=rf'/checkpoints/{n}$',
                        dst=rf'/checkpoints/\.(old|trash)-{n}-', no_exchange=True)
    again = ['--override', 'optimizer.learning_rate=3e-3', '--override', 'scheduler.total_steps=4']
    proc = Proc('train', '--config', cfg, *again, env=env)
    assert proc.wait_until(marker.exists, timeout=150), f"never paused:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    if how == 'exchange':                       # step_2 was never missing: it is the new, complete checkpoint
        assert verify_checkpoint(ck) == []
        assert sha(ck / 'model.safetensors') != old
    r = command('train', '--config', cfg, '--resume', *again)
    assert r.returncode == 0, r.stderr[-2000:]
    m = [RESUMED_RE.match(l) for l in r.stdout.splitlines() if RESUMED_RE.match(l)]
    assert m and m[0].group(1).endswith(n), f"did not resume from {n}:\n{r.stdout[-2000:]}"
    assert verify_checkpoint(run / 'checkpoints' / checkpoint_name(4)) == []
    assert not [p.name for p in (run / 'checkpoints').iterdir() if p.name.startswith('.')], 'leftover folders'


# --- item 4 -----------------------------------------------------------------------------------------------------

def test_fingerprint_covers_encode_special_tokens(assets, tmp_path):
    ours = build_from_artifacts(assets['tok'])
    raw = Tokenizer.from_file(str(assets['tokenizer']))          # same file; matches special tokens in text
    assert len(raw.encode('<eos>').ids) == 1 and len(ours.encode('<eos>').ids) > 1
    assert tokenizer_fingerprint(raw) != tokenizer_fingerprint(ours)
    corpus = tmp_path / 'c.txt'
    corpus.write_text(assets['corpus'].read_text() + '\nThe end <eos> of it.\n')
    kw = dict(cache_dir=tmp_path / 'cache', show_progress=False, verbose=False)
    a, b = prepare([corpus], ours, **kw), prepare([corpus], raw, **kw)
    assert a.dir != b.dir and not b.reused, 'two tokenizers that encode differently share a token cache'


# --- item 5 -----------------------------------------------------------------------------------------------------

def test_reused_shards_are_checked_by_hash(assets, tmp_path, capsys, monkeypatch):
    import transformer_nb.data as data_mod
    kw = dict(cache_dir=tmp_path / 'cache', show_progress=False)
    a = prepare([assets['corpus']], assets['tok'], **kw)
    want = np.array(a.train.tokens)
    shard = a.dir / a.manifest['train']['shards'][0]['file']
    size = shard.stat().st_size
    flip_byte(shard)                                              # same size, other content (a torn write)
    assert shard.stat().st_size == size
    capsys.readouterr()
    # the next process checks the hashes (the writing process trusts what it hashed while writing)
    monkeypatch.setattr(data_mod, '_VERIFIED', set()); monkeypatch.setattr(data_mod, '_WRITTEN', set())
    b = prepare([assets['corpus']], assets['tok'], **kw)
    assert not b.reused, 'a damaged cached shard was reused'
    assert 'does not match its sha256' in capsys.readouterr().err
    np.testing.assert_array_equal(np.array(b.train.tokens), want)
    assert prepare([assets['corpus']], assets['tok'], **kw).reused


@pytest.mark.skipif(not Path('/proc/self/fd').is_dir(), reason='needs /proc to name fsynced files')
def test_durable_writes_fsync_files_and_folders(assets, tmp_path, monkeypatch):
    from transformer_nb.config import atomic_write_bytes
    synced, real = [], os.fsync
    def spy(fd):
        synced.append(os.readlink(f'/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}'))
        return real(fd)
    monkeypatch.setattr(os, 'fsync', spy)
    atomic_write_bytes(tmp_path / 'x' / 'f.bin', b'data')
    assert str(tmp_path / 'x' / 'f.bin') in synced or any(s.startswith(str(tmp_path / 'x' / '.f.bin')) for s in synced)
    assert str(tmp_path / 'x') in synced, 'the folder was not fsynced after the rename'
    synced.clear()
    data = prepare([assets['corpus']], assets['tok'], cache_dir=tmp_path / 'cache', show_progress=False, verbose=False)
    names = [s['file'] for split in ('train', 'val') for s in data.manifest[split]['shards']]
    for f in names:
        assert any(s.endswith('/' + f) for s in synced), f"shard {f} was not fsynced"
    assert str(tmp_path / 'cache') in synced, 'the cache folder was not fsynced after the rename'


# --- item 6 -----------------------------------------------------------------------------------------------------

def test_original_style_micro_batch_config_trains(assets, tmp_path):
    d = config_dict(assets, tmp_path / 'run', steps=2, every=2)
    d['data'].update(batch_size=2, gradient_accumulation_steps=4)       # 2 per pass, 8 per optimizer step
    cfg = write_config(tmp_path / 'train.yaml', d)
    c = load_config(cfg)
    with pytest.warns(UserWarning, match=r'global batch 8\b'):
        assert c.micro_batch_size() == 2
    t = train_in_process(cfg)
    assert (t.step, t.micro_batch, t.grad_accum, t.global_batch) == (2, 2, 4, 8)
    assert t.tokens_per_step == 8 * 64
