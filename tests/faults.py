"""Fault injection and bookkeeping for the reliability tests (tests/test_reliability_*.py).

- `make_assets(dir)`: a few-KB corpus and a small byte-level BPE tokenizer trained on it.
- `write_config(path, ...)`: a tiny YAML run config (fp32, CPU, constant schedule, no dropout).
- `command(...)` / `Proc(...)`: run a console script (`train`, `tnb validate-corpus`, ...) as a user does,
  in its own process, with the environment pinned (1 thread, no FLOP measurement, unbuffered output).
- `PAUSE_HOOK`: the source of a `sitecustomize.py` that makes a process stop dead at one chosen
  filesystem event inside a checkpoint save (a `mkdir`, an `fsync` of a given file, a `rename`, the
  atomic `exchange` of a re-saved step; optionally with that swap disabled, as on other platforms): it
  writes a marker file and sleeps until the test SIGKILLs it. This is how the crash test lands a
  SIGKILL *inside* a checkpoint write deterministically, without sleeps and without touching the
  package (the hook lives in the test's temporary folder and is only on that process's PYTHONPATH).
- `malicious_pickle(marker)`: pickle bytes that create `marker` when unpickled (never by us).
- `tally(...)`: adds counts (kills survived, corruptions detected, inputs tried, ...) to a JSON summary
  (`$TNB_RELIABILITY_SUMMARY`, default `<pytest basetemp>/reliability_summary.json`) and prints it.
- `snapshot(dir)`: the sha256 of every file under a folder (to prove nothing was damaged).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import tomllib
import threading
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
ENV = {'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'TNB_PEAK_FLOPS': '1e11'}

WORDS = ("the king queen lord lady good night day love death sword crown fair sweet heart blood "
         "speak come go stay what why thou thee thy shall will not never ever my our your").split()


# --- assets -----------------------------------------------------------------------------------------

def write_corpus(path: Path, n_docs: int = 150, seed: int = 0) -> Path:
    "About 13 kB of made-up verse: `n_docs` short documents separated by blank lines (deterministic)."
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lines = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + rng.choice(',.;!?')
                 for _ in range(rng.randint(1, 4))]
        docs.append(rng.choice(['KING.', 'QUEEN.', 'LORD.', 'LADY.']) + '\n' + '\n'.join(lines))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n\n'.join(docs) + '\n', encoding='utf-8')
    return path


def make_assets(d: Path) -> dict:
    "Corpus (`corpus.txt`) and tokenizer (`tok/`, vocab 300) in folder `d`; returns their paths."
    from transformer_nb.tokenizer import train_bbpe
    corpus = write_corpus(d / 'corpus.txt')
    train_bbpe([corpus], d / 'tok', vocab_size=300, show_progress=False)
    return {'dir': d, 'corpus': corpus, 'tok': d / 'tok', 'tokenizer': d / 'tok' / 'tokenizer.json', 'cache': d / 'data'}


def config_dict(assets: dict, run: Path, hidden: int = 64, steps: int = 12, every: int = 2, keep: int = 2,
                seed: int = 3) -> dict:
    "A tiny run config as a dict: fp32 CPU, constant lr, no dropout, checkpoints in `run`/checkpoints."
    return {
        'model': {'hidden_size': hidden, 'intermediate_size': 2 * hidden, 'num_layers': 2,
                  'num_attention_heads': 4, 'max_position_embeddings': 64, 'attn_dropout': 0.0, 'residual_dropout': 0.0},
        'tokenizer': {'tokenizer_json': str(assets['tokenizer'])},
        'data': {'train_shards': [str(assets['corpus'])], 'batch_size': 8, 'sequence_length': 64,
                 'cache_dir': str(assets['cache'])},
        'optimizer': {'learning_rate': 1e-3},
        'scheduler': {'strategy': 'constant', 'total_steps': steps},
        'runtime': {'seed': seed, 'device': 'cpu', 'precision': 'fp32', 'log_every_n_steps': 1,
                    'checkpoint': {'directory': str(run / 'checkpoints'), 'every_n_steps': every, 'max_keep': keep},
                    'evaluation': {'every_n_steps': None, 'max_batches': 1},
                    'logging': {'tensorboard': None}}}


def write_config(path: Path, d: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding='utf-8')
    return path


def train_in_process(cfg_path: Path, overrides=(), resume: bool = False, threads: int = 1):
    "Run a Trainer in this process (quietly, `threads` torch threads like the subprocesses); returns it."
    import contextlib, io, warnings
    import torch
    from transformer_nb.config import load_config
    from transformer_nb.trainer import Trainer
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter('ignore')
            t = Trainer(load_config(cfg_path, overrides=list(overrides)), resume=resume, show_progress=False,
                        peak_flops=1e11)
            t.fit()
    finally:
        torch.set_num_threads(old)
    return t


# --- running commands -----------------------------------------------------------------------------------

# each console script's 'module:function', as pyproject.toml installs it
SCRIPTS = tomllib.loads((Path(__file__).resolve().parent.parent / 'pyproject.toml').read_text())['project']['scripts']


def installed(cmd: str) -> Path | None:
    "Console script `cmd` of this environment, if it is the one pyproject.toml declares (not one an older install left)."
    exe, (mod, fn) = BIN / cmd, SCRIPTS[cmd].split(':')
    try: return exe if f'from {mod} import {fn}' in exe.read_text(errors='replace') else None
    except OSError: return None


def argv_of(cmd: str, *args) -> list[str]:
    """The argv of console script `cmd` (`tnb`, `train` or `orchestrate`: `argv_of('tnb', 'generate', ...)`), or,
    where the script is not installed, of its main function."""
    if exe := installed(cmd): return [str(exe), *map(str, args)]
    mod, fn = SCRIPTS[cmd].split(':')
    return [sys.executable, '-c', f'import sys; from {mod} import {fn}; sys.exit({fn}())', *map(str, args)]


def in_process(cmd: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """Console script `cmd` called in this process (its main function, with `env` set meanwhile), its output captured:
    for what a command prints before it does any work (usage errors, --help), without a process's start-up cost (a
    second or more to import torch). `command` runs it as a user does."""
    import contextlib, importlib, io
    mod, fn = SCRIPTS[cmd].split(':')
    main = getattr(importlib.import_module(mod), fn)
    out, err, saved = io.StringIO(), io.StringIO(), {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: rc = main([str(a) for a in args])
            except SystemExit as e:                          # argparse: --help (0), a usage error (2)
                rc = e.code if isinstance(e.code, int) or e.code is None else 1
                if isinstance(e.code, str): err.write(e.code + '\n')
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return subprocess.CompletedProcess([cmd, *map(str, args)], rc or 0, out.getvalue(), err.getvalue())


def env_with(extra: dict | None = None) -> dict:
    "This process's environment, pinned by ENV, with `extra` (a PYTHONPATH in it goes before the inherited one)."
    env = dict(os.environ, **ENV)
    extra = dict(extra or {})
    if 'PYTHONPATH' in extra and os.environ.get('PYTHONPATH'):
        extra['PYTHONPATH'] += os.pathsep + os.environ['PYTHONPATH']
    env.update(extra)
    return env


def command(cmd: str, *args, cwd=None, timeout: float = 180, env: dict | None = None, preexec_fn=None):
    "Run console script `cmd` to completion; returns the CompletedProcess (text)."
    return subprocess.run(argv_of(cmd, *args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env_with(env), preexec_fn=preexec_fn)


def commands(calls: list[tuple], timeout: float = 240, parallel: int = 4) -> list[subprocess.CompletedProcess]:
    "Run independent commands, `parallel` at a time (each `(cmd, args)` or `(cmd, args, kwargs)`); results in order."
    out: list = [None] * len(calls)
    running: list = []

    def finish(i, argv, p):
        try: so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill(); so, se = p.communicate()
        out[i] = subprocess.CompletedProcess(argv, p.returncode, so, se)

    for i, c in enumerate(calls):
        cmd, args, kw = c[0], c[1], (c[2] if len(c) > 2 else {})
        if len(running) >= parallel: finish(*running.pop(0))
        argv = argv_of(cmd, *args)
        running.append((i, argv, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                  cwd=kw.get('cwd'), env=env_with(kw.get('env')),
                                                  preexec_fn=kw.get('preexec_fn'))))
    for r in running: finish(*r)
    return out


class Proc:
    "A running command whose stdout/stderr lines are collected by threads; `on_line(proc, line)` is called per stdout line."
    def __init__(self, cmd: str, *args, env: dict | None = None, on_line=None, cwd=None):
        self.on_line = on_line
        self.out, self.err = [], []
        self.p = subprocess.Popen(argv_of(cmd, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env_with(env), cwd=cwd)
        self.pid = self.p.pid
        self._t = [threading.Thread(target=self._read, args=(self.p.stdout, self.out, True), daemon=True),
                   threading.Thread(target=self._read, args=(self.p.stderr, self.err, False), daemon=True)]
        for t in self._t: t.start()

    def _read(self, stream, lines, is_out):
        for line in stream:
            lines.append(line.rstrip('\n'))
            if is_out and self.on_line is not None: self.on_line(self, line.rstrip('\n'))

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            try: os.kill(self.pid, sig)
            except ProcessLookupError: pass

    def wait(self, timeout: float = 180) -> int:
        try: rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(); rc = self.p.wait()
        for t in self._t: t.join(timeout=10)
        return rc

    def wait_until(self, cond, timeout: float = 120, poll: float = 0.01) -> bool:
        "Wait until `cond()` holds (True) or the process ends / the time is up (False)."
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond(): return True
            if self.p.poll() is not None: return bool(cond())
            time.sleep(poll)
        return False

    @property
    def stdout(self) -> str: return '\n'.join(self.out)
    @property
    def stderr(self) -> str: return '\n'.join(self.err)


def assert_user_error(rc: int, stderr: str, culprits, stdout: str = ''):
    "Exit status 2, exactly one stderr line starting 'error:' (naming one of `culprits`), and no traceback."
    culprits = [culprits] if isinstance(culprits, str) else list(culprits)
    errors = [l for l in stderr.splitlines() if l.startswith('error:')]
    ctx = f"\n--- rc {rc}\n--- stderr:\n{stderr[-3000:]}\n--- stdout:\n{stdout[-1500:]}"
    assert 'Traceback' not in stderr and 'Traceback' not in stdout, 'a traceback' + ctx
    assert rc == 2, f'exit status {rc}, expected 2' + ctx
    assert len(errors) == 1, f'{len(errors)} error lines, expected 1' + ctx
    assert any(c in errors[0] for c in culprits), f'the error does not name any of {culprits}' + ctx
    return errors[0]


# --- the pause hook ---------------------------------------------------------------------------------------

PAUSE_ENV = 'TNB_FAULT_PAUSE'

PAUSE_HOOK = r'''
# sitecustomize written by tests/faults.py: pause this process at one filesystem event (see PAUSE_ENV).
import os as _os
if _os.environ.get('TNB_FAULT_PAUSE'):
    import json as _json, re as _re, time as _time
    _spec = _json.loads(_os.environ['TNB_FAULT_PAUSE'])
    _hit = []
    def _pause(what):
        if _hit: return
        _hit.append(what)
        tmp = _spec['marker'] + '.part'
        with open(tmp, 'w') as f: f.write(_json.dumps({'pid': _os.getpid(), 'event': what}))
        _os.replace(tmp, _spec['marker'])
        while True: _time.sleep(3600)            # until the test SIGKILLs us
    def _match(key, path):
        return _spec.get(key) is None or _re.search(_spec[key], _os.fsdecode(_os.fspath(path))) is not None
    _ev = _spec['event']
    if _ev == 'fsync':
        _fsync = _os.fsync
        def fsync(fd):
            r = _fsync(fd)
            n = fd if isinstance(fd, int) else fd.fileno()
            try: p = _os.readlink('/proc/self/fd/%d' % n)
            except OSError: p = ''
            if _match('path', p): _pause('fsync ' + p)
            return r
        _os.fsync = fsync
    elif _ev == 'mkdir':
        _mkdir = _os.mkdir
        def mkdir(path, *a, **k):
            r = _mkdir(path, *a, **k)
            if _match('path', path): _pause('mkdir %s' % _os.fspath(path))
            return r
        _os.mkdir = mkdir
    elif _ev == 'rename':
        _rename = _os.rename
        def rename(src, dst, *a, **k):
            r = _rename(src, dst, *a, **k)
            if _match('src', src) and _match('dst', dst): _pause('rename %s -> %s' % (_os.fspath(src), _os.fspath(dst)))
            return r
        _os.rename = rename
    elif _ev == 'exchange':                      # the atomic swap of a re-saved checkpoint (transformer_nb.checkpoint)
        import transformer_nb.checkpoint as _ck
        _swap = _ck._rename_exchange
        def _rename_exchange(a, b):
            r = _swap(a, b)
            if r and _match('src', a) and _match('dst', b): _pause('exchange %s <-> %s' % (_os.fspath(a), _os.fspath(b)))
            return r
        _ck._rename_exchange = _rename_exchange
    if _spec.get('no_exchange'):                 # as on a platform without an atomic swap: the fallback path
        import transformer_nb.checkpoint as _ck
        _ck._SWAP = None
'''


def hook_dir(d: Path) -> Path:
    "A folder holding the pause hook as `sitecustomize.py` (put it on PYTHONPATH)."
    d.mkdir(parents=True, exist_ok=True)
    (d / 'sitecustomize.py').write_text(PAUSE_HOOK)
    return d


def pause_env(hook: Path, marker: Path, event: str, **patterns) -> dict:
    """Environment making a process pause after the first `event` ('mkdir'|'fsync'|'rename'|'exchange') matching
    `patterns` (`no_exchange=True`: the checkpoint code finds no atomic swap and takes its fallback path)."""
    return {'PYTHONPATH': str(hook), PAUSE_ENV: json.dumps({'event': event, 'marker': str(marker), **patterns})}


# --- corruption, malice, snapshots --------------------------------------------------------------------------

class _Payload:
    "Unpickling this runs `exec(code)`: the code creates a marker file."
    def __init__(self, marker: Path): self.code = f"open({str(marker)!r}, 'w').write('pwned')"
    def __reduce__(self): return (exec, (self.code,))


def malicious_pickle(marker: Path) -> bytes:
    "A plain pickle that creates `marker` when loaded."
    return pickle.dumps(_Payload(marker))


def malicious_torch_file(marker: Path, path: Path) -> Path:
    "A torch.save file (zip + data.pkl, like pytorch_model.bin) that creates `marker` when torch.load-ed without weights_only."
    import torch
    torch.save({'weight': _Payload(marker)}, path)
    return path


def flip_byte(path: Path, where: float = 0.5):
    b = bytearray(path.read_bytes()); i = int(len(b) * where); b[i] ^= 0xFF; path.write_bytes(bytes(b))


def reseal(ck: Path):
    "Rewrite a checkpoint's manifest.json to match its files (an attacker who controls the whole folder)."
    m = json.loads((ck / 'manifest.json').read_text())
    for rel in m['files']:
        data = (ck / rel).read_bytes()
        m['files'][rel] = {'sha256': hashlib.sha256(data).hexdigest(), 'size': len(data)}
    (ck / 'manifest.json').write_text(json.dumps(m, indent=1, sort_keys=True) + '\n')


def snapshot(d: Path) -> dict[str, str]:
    "{relative path: sha256} of every file under `d` (symlinks not followed)."
    out = {}
    for p in sorted(Path(d).rglob('*')):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(d).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --- counts ------------------------------------------------------------------------------------------------

def summary_path(tmp_path_factory) -> Path:
    p = os.environ.get('TNB_RELIABILITY_SUMMARY')
    return Path(p) if p else tmp_path_factory.getbasetemp() / 'reliability_summary.json'


def tally(tmp_path_factory, **counts) -> dict:
    "Add `counts` to the JSON summary; returns the totals so far."
    p = summary_path(tmp_path_factory)
    data = json.loads(p.read_text()) if p.exists() else {}
    for k, v in counts.items(): data[k] = data.get(k, 0) + v
    p.write_text(json.dumps(data, indent=1, sort_keys=True) + '\n')
    return data


def print_summary(tmp_path_factory, title: str):
    p = summary_path(tmp_path_factory)
    data = json.loads(p.read_text()) if p.exists() else {}
    print(f"\n[{title}] reliability counts so far ({p}):\n" + '\n'.join(f"  {k:34} {v}" for k, v in sorted(data.items())))


STEP_RE = re.compile(r'^step\s+(\d+)/(\d+) \|')
CKPT_RE = re.compile(r'^checkpoint: .*step_(\d{12})$')
RESUMED_RE = re.compile(r'^resumed from (\S+) \(step (\d+),')
