"""Corrupt checkpoints, foreign code, a full disk (issue 7, items 2, 3 and 4).

A base run (tiny fp32 CPU model, a checkpoint at every one of its 7 steps, all kept) is trained once in
this process; every scenario works on a copy of it.

- Corrupt checkpoints (item 2): truncated model.safetensors, a flipped byte, a missing file, an edited
  trainer_state.json (same length: only the sha256 can tell), a missing manifest, an empty folder.
  In-process, every corruption of a long list is caught by `verify_checkpoint` naming the file. Through
  the real `train --resume`: the six newest checkpoints corrupted six ways are each skipped with a
  warning naming the file, training resumes from the newest valid one and ends with the same weights
  as the uninterrupted run; with none valid, `train --resume` stops with exit 2 and one clear line,
  and the run directory is left as it was.
- Foreign code (item 3): the package source holds no pickle / torch.load without weights_only=True /
  unsafe YAML; malicious pickles (plain, and torch.save zips like pytorch_model.bin) and a YAML
  python/object tag planted where a checkpoint file, a config or a tokenizer file is expected (with the
  manifests re-sealed to match, as an attacker who controls the folder would) are refused with a clear
  error, both in-process (where an unpickling spy also proves nothing was unpickled) and through `train`
  and `generate`; their marker files never appear.
- Full disk (item 4): `train --resume` under a lowered RLIMIT_FSIZE (SIGXFSZ ignored, so writes fail with
  EFBIG) fails its next checkpoint save, once in model.safetensors and once in optimizer.safetensors:
  exit 2, one line, no traceback, no temporary folder left, the previous checkpoint still verifies, and a
  later `--resume` without the limit continues from it.

The real commands (8 processes) run in one batch, 4 at a time, to keep the file fast.
"""
import contextlib
import json
import os
import pickle
import re
import resource
import shutil
import signal
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faults import (assert_user_error, commands, config_dict, flip_byte, make_assets, malicious_pickle,
                    malicious_torch_file, print_summary, reseal, snapshot, tally, train_in_process, write_config)
from transformer_nb.checkpoint import (CheckpointError, CheckpointWarning, checkpoint_name, latest_checkpoint,
                                       list_checkpoints, load_checkpoint, load_model_tensors, verify_checkpoint)
from transformer_nb.config import UserError

ROOT = Path(__file__).resolve().parent.parent
STEPS = 7
CK = checkpoint_name


# --- the base run and the batch of real commands ------------------------------------------------------

@pytest.fixture(scope='module')
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp('files')
    assets = make_assets(d / 'assets')
    cfg = write_config(d / 'base.yaml', config_dict(assets, d / 'base', hidden=32, steps=STEPS, every=1, keep=20))
    t = train_in_process(cfg)
    assert t.step == STEPS and len(list_checkpoints(d / 'base' / 'checkpoints')) == STEPS
    yield {'dir': d, 'assets': assets, 'run': d / 'base', 'ck': d / 'base' / 'checkpoints', 'trainer': t,
           'markers': d / 'markers'}
    print_summary(tmp_path_factory, 'files')


def clone(base, name: str, steps: int = STEPS) -> tuple[Path, Path]:
    "A copy of the base run directory and a config that trains in it: (run dir, config path)."
    run = base['dir'] / name
    shutil.copytree(base['run'], run)
    (run / 'train.lock').unlink(missing_ok=True)
    cfg = write_config(base['dir'] / f'{name}.yaml',
                       config_dict(base['assets'], run, hidden=32, steps=steps, every=1, keep=20))
    return run, cfg


# the corruptions of item 2, applied to checkpoint folder `p`; each returns the file a warning must name
def truncate_model(p):   f = p / 'model.safetensors'; f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]); return 'model.safetensors'
def flip_optimizer(p):   flip_byte(p / 'optimizer.safetensors', 0.7); return 'optimizer.safetensors'
def delete_optim_json(p): (p / 'optimizer.json').unlink(); return 'optimizer.json'
def edit_state(p):
    f = p / 'trainer_state.json'; s = f.read_text()
    new = re.sub(r'"tokens_seen": (\d)', lambda m: f'"tokens_seen": {(int(m.group(1)) + 1) % 10}', s, count=1)
    assert new != s and len(new) == len(s)
    f.write_text(new); return 'trainer_state.json'
def delete_manifest(p):  (p / 'manifest.json').unlink(); return 'manifest.json'
def empty_folder(p):
    shutil.rmtree(p); p.mkdir(); return 'manifest.json'

STACK = [truncate_model, flip_optimizer, delete_optim_json, edit_state, delete_manifest]   # steps 7, 6, 5, 4, 3


@pytest.fixture(scope='module')
def batch(base, tmp_path_factory):
    "Prepare every real-command scenario, run them all (4 at a time), return {name: (CompletedProcess, info)}."
    markers = base['markers']; markers.mkdir()
    calls, info = {}, {}

    # item 2: the six newest checkpoints corrupted six ways (an empty folder newer than all of them)
    run, cfg = clone(base, 'skip')
    ck = run / 'checkpoints'
    (ck / CK(STEPS + 1)).mkdir()
    named = {CK(STEPS + 1): 'manifest.json'}
    for i, corrupt in enumerate(STACK): named[CK(STEPS - i)] = corrupt(ck / CK(STEPS - i))
    info['skip'] = {'run': run, 'named': named, 'resume_from': STEPS - len(STACK)}
    calls['skip'] = ('train', ['--config', cfg, '--resume'])

    # item 2: none valid
    run, cfg = clone(base, 'none')
    kinds = STACK + [empty_folder]
    for i, p in enumerate(list_checkpoints(run / 'checkpoints')): kinds[i % len(kinds)](p)
    info['none'] = {'run': run, 'before': snapshot(run)}
    calls['none'] = ('train', ['--config', cfg, '--resume'])

    # item 3: a torch.save pickle as model.safetensors of the newest checkpoint, manifest re-sealed
    run, cfg = clone(base, 'evil_model')
    p = run / 'checkpoints' / CK(STEPS)
    malicious_torch_file(markers / 'evil_model', p / 'model.safetensors'); reseal(p)
    info['evil_model'] = {'marker': markers / 'evil_model'}
    calls['evil_model'] = ('train', ['--config', cfg, '--resume'])

    # item 3: a pickle as the checkpoint's tokenizer.json, both manifests re-sealed; `generate` from it
    run, _ = clone(base, 'evil_gen')
    p = run / 'checkpoints' / CK(STEPS)
    (p / 'tokenizer' / 'tokenizer.json').write_bytes(malicious_pickle(markers / 'evil_gen'))
    reseal_tokenizer(p / 'tokenizer'); reseal(p)
    info['evil_gen'] = {'marker': markers / 'evil_gen'}
    calls['evil_gen'] = ('tnb', ['generate', '--checkpoint', p, '--prompt', 'the king', '--max-new-tokens', '2', '--device', 'cpu'])

    # item 3: the config's tokenizer_json is a pickle
    evil = base['dir'] / 'evil_tok' / 'tokenizer.json'; evil.parent.mkdir()
    evil.write_bytes(malicious_pickle(markers / 'evil_tok'))
    d = config_dict(base['assets'], base['dir'] / 'evil_tok_run', hidden=32, steps=2)
    d['tokenizer']['tokenizer_json'] = str(evil)
    info['evil_tok'] = {'marker': markers / 'evil_tok'}
    calls['evil_tok'] = ('train', ['--config', write_config(base['dir'] / 'evil_tok.yaml', d)])

    # item 3: a YAML config with a python/object tag (YAML's pickle)
    y = base['dir'] / 'evil.yaml'
    y.write_text(f"model: !!python/object/apply:builtins.exec [\"open({str(markers / 'evil_yaml')!r}, 'w').write('x')\"]\n")
    info['evil_yaml'] = {'marker': markers / 'evil_yaml'}
    calls['evil_yaml'] = ('train', ['--config', y])

    # item 4: the file size limit below model.safetensors, then between it and optimizer.safetensors
    sizes = {f: (base['ck'] / CK(STEPS) / f).stat().st_size for f in ('model.safetensors', 'optimizer.safetensors')}
    others = max(f.stat().st_size for f in (base['ck'] / CK(STEPS)).rglob('*') if f.is_file() and 'safetensors' not in f.name)
    assert others < sizes['model.safetensors'] // 2 and sizes['model.safetensors'] < sizes['optimizer.safetensors']
    for name, limit in (('full_model', sizes['model.safetensors'] // 2),
                        ('full_optimizer', (sizes['model.safetensors'] + sizes['optimizer.safetensors']) // 2)):
        run, cfg = clone(base, name, steps=STEPS + 2)
        info[name] = {'run': run, 'cfg': cfg, 'limit': limit, 'culprit': 'optimizer' if 'optim' in name else 'model'}
        calls[name] = ('train', ['--config', cfg, '--resume'],
                       {'preexec_fn': _limit_file_size(limit), 'env': {'PYTHONDONTWRITEBYTECODE': '1'}})

    names = list(calls)
    results = commands([calls[n] for n in names], parallel=4)
    return {n: (r, info[n]) for n, r in zip(names, results)}


def _limit_file_size(limit: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def reseal_tokenizer(folder: Path):
    "Rewrite a tokenizer manifest.json to match its artifacts."
    import hashlib
    m = json.loads((folder / 'manifest.json').read_text())
    for name in m['artifacts']:
        data = (folder / name).read_bytes()
        m['artifacts'][name] = {'sha256': hashlib.sha256(data).hexdigest(), 'size': len(data)}
    (folder / 'manifest.json').write_text(json.dumps(m, indent=2))


# --- item 2: corrupt checkpoints --------------------------------------------------------------------------

CORRUPTIONS = {
    'truncated model.safetensors': (truncate_model, 'model.safetensors'),
    'truncated optimizer.safetensors': (lambda p: (p / 'optimizer.safetensors').write_bytes(b'\0' * 8), 'optimizer.safetensors'),
    'flipped byte in model.safetensors': (lambda p: flip_byte(p / 'model.safetensors', 0.9), 'model.safetensors'),
    'flipped byte in optimizer.safetensors': (flip_optimizer, 'optimizer.safetensors'),
    'flipped byte in optimizer.json': (lambda p: flip_byte(p / 'optimizer.json', 0.5), 'optimizer.json'),
    'flipped byte in trainer_state.json': (lambda p: flip_byte(p / 'trainer_state.json', 0.3), 'trainer_state.json'),
    'flipped byte in training.yaml': (lambda p: flip_byte(p / 'training.yaml', 0.5), 'training.yaml'),
    'flipped byte in tokenizer/tokenizer.json': (lambda p: flip_byte(p / 'tokenizer' / 'tokenizer.json', 0.5), 'tokenizer.json'),
    'edited trainer_state.json (same size)': (edit_state, 'trainer_state.json'),
    'appended to model.safetensors': (lambda p: open(p / 'model.safetensors', 'ab').write(b'x'), 'model.safetensors'),
    'missing model.safetensors': (lambda p: (p / 'model.safetensors').unlink(), 'model.safetensors'),
    'missing optimizer.safetensors': (lambda p: (p / 'optimizer.safetensors').unlink(), 'optimizer.safetensors'),
    'missing optimizer.json': (delete_optim_json, 'optimizer.json'),
    'missing trainer_state.json': (lambda p: (p / 'trainer_state.json').unlink(), 'trainer_state.json'),
    'missing tokenizer/tokenizer.json': (lambda p: (p / 'tokenizer' / 'tokenizer.json').unlink(), 'tokenizer.json'),
    'missing manifest.json': (delete_manifest, 'manifest.json'),
    'manifest.json not JSON': (lambda p: (p / 'manifest.json').write_text('{"files": '), 'manifest.json'),
    'manifest.json emptied': (lambda p: (p / 'manifest.json').write_bytes(b''), 'manifest.json'),
    'manifest.json without model entry': (lambda p: _edit_manifest(p, lambda m: m['files'].pop('model.safetensors')), 'model.safetensors'),
    'model.safetensors replaced by a folder': (lambda p: ((p / 'model.safetensors').unlink(), (p / 'model.safetensors').mkdir()), 'model.safetensors'),
    'empty folder': (empty_folder, 'manifest.json'),
}


def _edit_manifest(p, fn):
    m = json.loads((p / 'manifest.json').read_text()); fn(m); (p / 'manifest.json').write_text(json.dumps(m))


def test_every_corruption_is_detected_through_the_manifest(base, tmp_path, tmp_path_factory):
    "Each corruption of the newest checkpoint: verify_checkpoint names the file, latest_checkpoint skips it with a warning naming it."
    for i, (what, (corrupt, culprit)) in enumerate(CORRUPTIONS.items()):
        root = tmp_path / f'c{i}'
        root.mkdir()
        for s in (STEPS - 1, STEPS): shutil.copytree(base['ck'] / CK(s), root / CK(s))
        corrupt(root / CK(STEPS))
        problems = verify_checkpoint(root / CK(STEPS))
        assert problems and any(culprit in p for p in problems), (what, problems)
        with pytest.warns(CheckpointWarning) as w:
            assert latest_checkpoint(root) == root / CK(STEPS - 1), what
        msgs = [str(x.message) for x in w]
        assert len(msgs) == 1 and CK(STEPS) in msgs[0] and culprit in msgs[0] and '\n' not in msgs[0], (what, msgs)
        with pytest.raises(CheckpointError, match=re.escape(culprit)):
            load_checkpoint(root / CK(STEPS), base['trainer'].raw_model)
    tally(tmp_path_factory, corruptions_detected=len(CORRUPTIONS))


def test_resume_skips_each_corrupt_checkpoint_with_a_warning(batch, base, tmp_path_factory):
    r, info = batch['skip']
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr
    warns = [l for l in r.stderr.splitlines() if 'skipping corrupt checkpoint' in l]
    for step, culprit in info['named'].items():
        hits = [l for l in warns if re.search(rf'skipping corrupt checkpoint \S*{step}: .*{re.escape(culprit)}', l)]
        assert len(hits) == 1, (step, culprit, warns)
        assert hits[0].startswith('warning: ')
    assert len(warns) == len(info['named'])
    assert re.search(rf'^resumed from \S*{CK(info["resume_from"])} \(step {info["resume_from"]},', r.stdout, re.M), r.stdout[-2000:]
    ck = info['run'] / 'checkpoints'
    for s in range(info['resume_from'] + 1, STEPS + 1): assert verify_checkpoint(ck / CK(s)) == [], s   # replaced
    got, want = load_file(ck / CK(STEPS) / 'model.safetensors'), load_file(base['ck'] / CK(STEPS) / 'model.safetensors')
    assert all(torch.equal(got[k], want[k]) for k in want)
    tally(tmp_path_factory, corruptions_detected=len(info['named']))


def test_resume_with_no_valid_checkpoint_stops_with_one_message(batch, tmp_path_factory):
    r, info = batch['none']
    line = assert_user_error(r.returncode, r.stderr, ['none is valid', 'no valid checkpoint'], r.stdout)
    assert str(info['run'] / 'checkpoints') in line, line
    assert snapshot(info['run']) == info['before'], 'the run directory changed'
    tally(tmp_path_factory, corruptions_detected=STEPS + 1)


# --- item 3: no foreign code ------------------------------------------------------------------------------

FORBIDDEN = [
    (r'\bimport\s+(c?pickle|dill|cloudpickle|joblib|shelve|marshal)\b|\bfrom\s+(c?pickle|dill|joblib|shelve)\s+import', 'a pickle module'),
    (r'\b(c?pickle|dill|joblib|marshal)\.(load|loads|Unpickler)\b', 'unpickling'),
    (r'\byaml\.(unsafe_load|full_load|load_all)\b|Loader\s*=\s*yaml\.(Loader|UnsafeLoader|FullLoader)\b', 'an unsafe YAML loader'),
    (r'allow_pickle\s*=\s*True', 'numpy allow_pickle'),
    (r'torch\.jit\.load|torch\.package', 'TorchScript/torch.package loading'),
]


def _calls(src: str, name: str) -> list[str]:
    "The full text of every call `name(...)` in `src` (parentheses balanced)."
    out = []
    for m in re.finditer(re.escape(name) + r'\s*\(', src):
        depth, i = 0, m.end() - 1
        while i < len(src):
            depth += {'(': 1, ')': -1}.get(src[i], 0)
            if depth == 0: break
            i += 1
        out.append(src[m.start(): i + 1])
    return out


# the one unpickler the package may hold: DCP's `.metadata` is a pickle by DCP's design, so checkpoint.py reads it
# with a subclass whose find_class resolves an allowlist (test_dcp_metadata_unpickler_runs_nothing below)
ALLOWED_UNPICKLER = ('checkpoint.py', 'class _MetadataUnpickler(pickle.Unpickler):')


def _allowed_unpickler_lines(f, src):
    "The `import pickle` and allowlisted-Unpickler lines of `src`, where `f` is the file allowed to hold them."
    if f.name != ALLOWED_UNPICKLER[0] or ALLOWED_UNPICKLER[1] not in src: return set()
    body = src.split(ALLOWED_UNPICKLER[1], 1)[1].split('\nclass ', 1)[0].split('\ndef ', 1)[0]
    if 'def find_class(self, module, name):' not in body: return set()
    return {'import pickle', 'pickle.Unpickler'}


def test_package_source_never_unpickles():
    files = sorted((ROOT / 'transformer_nb').glob('*.py'))
    assert len(files) > 5
    bad = []
    for f in files:
        src = f.read_text()
        allowed = _allowed_unpickler_lines(f, src)
        if allowed: assert src.count('pickle.Unpickler') == 1 and len(re.findall(r'\bpickle\.(load|loads)\b', src)) == 0
        for pat, what in FORBIDDEN:
            for m in re.finditer(pat, src):
                if m.group(0) not in allowed: bad.append(f"{f.name}: {what}: {m.group(0)}")
        for call in _calls(src, 'torch.load') + _calls(src, 'np.load') + _calls(src, 'numpy.load'):
            if call.startswith('torch.load') and not re.search(r'weights_only\s*=\s*True', call): bad.append(f"{f.name}: {call}")
        for call in _calls(src, 'yaml.load'):
            if not re.search(r'Loader\s*=\s*(yaml\.)?(SafeLoader|CSafeLoader|_UniqueKeyLoader)\b', call): bad.append(f"{f.name}: {call}")
    assert not bad, bad
    import yaml
    from transformer_nb import config
    assert issubclass(config._UniqueKeyLoader, yaml.SafeLoader)


def test_dcp_metadata_unpickler_runs_nothing(tmp_path):
    "The allowlisted unpickler refuses a pickle that names any other global, before anything runs."
    from transformer_nb.checkpoint import check_dcp_metadata
    marker = tmp_path / 'ran'
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    (tmp_path / '.metadata').write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match='not DCP metadata'): check_dcp_metadata(tmp_path / '.metadata')
    assert not marker.exists()


@contextlib.contextmanager
def unpickling_spy():
    "Record every unpickling (pickle.load/loads/Unpickler, torch.load without weights_only=True) in this process."
    calls = []
    saved = pickle.load, pickle.loads, pickle.Unpickler, torch.load
    def wrap(name, fn):
        def spy(*a, **k): calls.append(name); return fn(*a, **k)
        return spy
    class Unpickler(saved[2]):
        def __init__(self, *a, **k): calls.append('pickle.Unpickler'); super().__init__(*a, **k)
    def torch_load(*a, **k):
        if k.get('weights_only') is not True: calls.append('torch.load')
        return saved[3](*a, **k)
    pickle.load, pickle.loads, pickle.Unpickler, torch.load = wrap('pickle.load', saved[0]), wrap('pickle.loads', saved[1]), Unpickler, torch_load
    try: yield calls
    finally: pickle.load, pickle.loads, pickle.Unpickler, torch.load = saved


def test_planted_pickles_are_refused_in_process(base, tmp_path, tmp_path_factory):
    from transformer_nb.checkpoint import load_for_generation
    from transformer_nb.config import load_config
    from transformer_nb.hf import read_hf_tensors
    from transformer_nb.tokenizer import build_from_artifacts
    markers = tmp_path / 'markers'; markers.mkdir()
    t = base['trainer']
    n = [0, 0]

    def fresh(tag):
        n[1] += 1                                          # (folder names must not contain the culprit's name)
        p = tmp_path / f'v{n[1]}' / CK(STEPS)
        shutil.copytree(base['ck'] / CK(STEPS), p)
        return p, markers / tag

    wrong = []                                             # refused, but the message does not name the culprit

    def refused(fn, culprit, marker):
        n[0] += 1
        with pytest.raises(UserError) as e: fn()
        assert not marker.exists(), f'{marker} appeared: foreign code ran'
        msg = str(e.value)
        if culprit not in msg or '\n' in msg: wrong.append(f'{culprit}: {msg}')

    with unpickling_spy() as calls, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for kind in ('pickle', 'torch'):
            for f in ('model.safetensors', 'optimizer.safetensors'):
                p, m = fresh(f'{kind}-{f}')
                if kind == 'pickle': (p / f).write_bytes(malicious_pickle(m))
                else: malicious_torch_file(m, p / f)
                reseal(p)                                  # the manifest can't save us: the loader must refuse
                refused(lambda: load_checkpoint(p, t.raw_model, t.optimizer), f, m)
                if f == 'model.safetensors':
                    refused(lambda: load_model_tensors(p / f), f, m)
                    refused(lambda: load_for_generation(p, 'cpu'), f, m)
                    hf = tmp_path / f'hf-{kind}'; hf.mkdir()
                    shutil.copy(p / f, hf / f)
                    refused(lambda: read_hf_tensors(hf), f, m)
        for f in ('optimizer.json', 'trainer_state.json'):
            p, m = fresh(f'pickle-{f}')
            (p / f).write_bytes(malicious_pickle(m)); reseal(p)
            refused(lambda: load_checkpoint(p, t.raw_model, t.optimizer), f, m)
        p, m = fresh('pickle-tokenizer')
        (p / 'tokenizer' / 'tokenizer.json').write_bytes(malicious_pickle(m)); reseal_tokenizer(p / 'tokenizer'); reseal(p)
        refused(lambda: build_from_artifacts(p / 'tokenizer'), 'tokenizer.json', m)
        refused(lambda: build_from_artifacts(p / 'tokenizer' / 'tokenizer.json'), 'tokenizer.json', m)
        refused(lambda: load_for_generation(p, 'cpu'), 'tokenizer.json', m)
        p, m = fresh('yaml-training')
        (p / 'training.yaml').write_text(f"model: !!python/object/apply:builtins.exec [\"open({str(m)!r}, 'w')\"]\n"); reseal(p)
        refused(lambda: load_config(p / 'training.yaml'), 'training.yaml', m)
        refused(lambda: load_for_generation(p, 'cpu'), 'training.yaml', m)
        hf = tmp_path / 'hf-bin'; hf.mkdir(); m = markers / 'hf-bin'
        malicious_torch_file(m, hf / 'pytorch_model.bin')
        refused(lambda: read_hf_tensors(hf), 'pytorch_model.bin', m)
    assert calls == [], f'something was unpickled: {calls}'
    assert not list(markers.iterdir())
    tally(tmp_path_factory, malicious_files_refused=n[0])
    assert not wrong, f'{len(wrong)} of {n[0]} refusals do not name the culprit on one line: {wrong}'


@pytest.mark.parametrize('name,culprit', [('evil_model', 'model.safetensors'), ('evil_gen', 'tokenizer.json'),
                                          ('evil_tok', 'tokenizer.json'), ('evil_yaml', 'evil.yaml')])
def test_planted_pickles_are_refused_by_the_commands(batch, name, culprit, tmp_path_factory):
    r, info = batch[name]
    assert not info['marker'].exists(), 'foreign code ran'
    assert_user_error(r.returncode, r.stderr, culprit, r.stdout)
    tally(tmp_path_factory, malicious_files_refused=1)


# --- item 4: disk full ------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['full_model', 'full_optimizer'])
def test_disk_full_during_a_save_fails_cleanly(batch, name, tmp_path_factory):
    r, info = batch[name]
    ck = info['run'] / 'checkpoints'
    line = assert_user_error(r.returncode, r.stderr, CK(STEPS + 1), r.stdout)
    assert re.search(r'File too large|EFBIG|errno 27|os error 27', line, re.I), f'the cause is not named: {line}'
    assert 'step 8' in r.stdout or f'step {STEPS + 1}/' in r.stdout            # it trained, then failed to save
    assert not (ck / CK(STEPS + 1)).exists()
    assert not [p.name for p in ck.iterdir() if p.name.startswith('.')], 'a temporary folder was left'
    assert verify_checkpoint(ck / CK(STEPS)) == [] and latest_checkpoint(ck) == ck / CK(STEPS)
    assert not (info['run'] / 'train.lock').exists()
    t = train_in_process(info['cfg'], resume=True)                        # room again: it goes on from step 7
    assert t.step == STEPS + 2 and [r['step'] for r in t.history['train']] == [STEPS + 1, STEPS + 2]
    tally(tmp_path_factory, disk_full_saves_failed_cleanly=1)
