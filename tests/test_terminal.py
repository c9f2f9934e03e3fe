"""The commands in a real terminal (issue 18): files, progress output, help and messages as a user meets them."""
import os
import re
import shutil
import stat
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from faults import make_assets


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp('terminal') / 'assets')


# --- item 10: file modes ------------------------------------------------------------------------------------------

def test_checkpoint_files_follow_the_umask(assets, tmp_path):
    "Every file of a checkpoint (weights, optimizer, tokenizer copy, config) gets the mode `open()` would give it."
    from transformer_nb.checkpoint import save_checkpoint
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(m.parameters())
    old = os.umask(0o027)
    try: ck = save_checkpoint(tmp_path / 'ck', 1, m, opt, {}, config={'a': 1}, tokenizer_dir=assets['tok'])
    finally: os.umask(old)
    modes = {f.relative_to(ck).as_posix(): oct(stat.S_IMODE(f.stat().st_mode)) for f in ck.rglob('*') if f.is_file()}
    assert {'model.safetensors', 'optimizer.safetensors', 'training.yaml', 'tokenizer/tokenizer.json'} <= set(modes)
    assert set(modes.values()) == {oct(0o640)}, modes


# --- item 9: a stated val_fraction is the plan, not a warning ------------------------------------------------------

def test_no_validation_warning_when_val_fraction_is_stated(assets, tmp_path):
    from faults import config_dict, write_config
    from transformer_nb.config import load_config
    from transformer_nb.trainer import Trainer
    seen = {}
    for stated in (True, False):
        d = config_dict(assets, tmp_path / f'run{stated}', steps=1, every=1)
        d['data']['validation_shards'] = []
        if stated: d['data']['val_fraction'] = 0.1
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            with Trainer(load_config(write_config(tmp_path / f'{stated}.yaml', d)), show_progress=False): pass
        seen[stated] = [str(x.message) for x in w if 'validation_shards' in str(x.message)]
    assert seen[True] == [], seen[True]
    assert len(seen[False]) == 1 and 'data.val_fraction=0.1' in seen[False][0]


# --- items 2 and 3: what a terminal 80 columns wide shows -----------------------------------------------------------

def run_in_terminal(argv, env: dict, cols: int = 80, rows: int = 30, timeout: float = 240, cwd=None) -> tuple[int, bytes]:
    "Run `argv` with a pseudo-terminal of `cols` x `rows` as stdin/stdout/stderr; return (exit status, raw output)."
    import fcntl, pty, select, struct, subprocess, termios, time
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True, cwd=cwd)
    os.close(slave)
    out, end = b'', time.monotonic() + timeout
    while time.monotonic() < end:
        if not select.select([master], [], [], 1.0)[0]:
            if p.poll() is not None: break
            continue
        try: chunk = os.read(master, 1 << 16)
        except OSError: break                              # EIO: the other side is closed
        if not chunk: break
        out += chunk
    if p.poll() is None: p.kill()
    os.close(master)
    return p.wait(), out


def render(raw: bytes, cols: int = 80) -> tuple[list[str], list[str]]:
    """A small terminal: carriage return, newline, cursor up/down, erase line; returns the screen's lines
    (scrollback included) and every line that wrapped (text written past column `cols`)."""
    lines, row, col, wrapped = [''], 0, 0, []
    text = raw.decode('utf-8', 'replace')
    i = 0
    def put(ch):
        nonlocal row, col
        if col >= cols:                                      # autowrap: the line was too long
            wrapped.append(lines[row]); row += 1; col = 0
            if row == len(lines): lines.append('')
        ln = lines[row].ljust(col)
        lines[row] = ln[:col] + ch + ln[col + 1:]; col += 1
    while i < len(text):
        ch = text[i]
        if ch == '\x1b' and text[i + 1:i + 2] == '[':
            m = re.match(r'\x1b\[(\d*);?(\d*)([A-Za-z])', text[i:])
            if m:
                n, op = int(m.group(1) or 1), m.group(3)
                if op == 'A': row = max(0, row - n)
                elif op == 'B':
                    row += n
                    while row >= len(lines): lines.append('')
                elif op == 'K': lines[row] = lines[row][:col] if m.group(1) in ('', '0') else ''
                i += m.end(); continue
        if ch == '\r': col = 0
        elif ch == '\n':
            row += 1; col = 0
            if row == len(lines): lines.append('')
        elif ch in '\x07\x08': pass
        elif ch >= ' ': put(ch)
        i += 1
    return [l.rstrip() for l in lines], wrapped


@pytest.fixture
def short_dir():
    "A temporary folder with a short absolute path: pytest's own (deeper under pytest-xdist) would wrap by themselves."
    d = Path(tempfile.mkdtemp(prefix='tnb-'))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_training_output_in_an_80_column_terminal(assets, short_dir):
    from faults import argv_of, config_dict, env_with, write_config
    shutil.copytree(assets['dir'], short_dir / 'a', ignore=shutil.ignore_patterns('data'))
    a = {k: short_dir / 'a' / v.relative_to(assets['dir']) if isinstance(v, Path) else v for k, v in assets.items()}
    work = short_dir / 'w'
    d = config_dict(a, work / 'run', steps=8, every=2, keep=1)       # keep 1: "pruned ..." on every save
    d['runtime']['evaluation'] = {'every_n_steps': 4, 'max_batches': 1}
    cfg = write_config(work / 'train.yaml', d)
    env = env_with({'COLUMNS': '80', 'LINES': '30', 'TERM': 'xterm'})
    rc, raw = run_in_terminal(argv_of('train', '--config', cfg), env, cwd=work)    # run paths are short: relative
    screen, wrapped = render(raw)
    shown = '\n'.join(screen)
    assert rc == 0, shown[-3000:]
    assert not wrapped, 'lines wider than 80 columns:\n' + '\n'.join(wrapped)
    for marker in (r'step\s+\d+/8 \| loss', r'eval step \d+ \| loss', r'checkpoint: ', r'pruned ', r'training [\d.]+M parameters'):
        hits = [l for l in screen if re.search(marker, l)]
        assert hits, f'no {marker!r} line:\n{shown[-3000:]}'
        glued = [l for l in hits if not re.match(r'\s*' + marker, l)]
        assert not glued, f'{marker!r} printed onto another line (the progress bar?):\n' + '\n'.join(glued)
    bars = [l for l in screen if re.search(r'\d+/8 \[', l)]
    assert len(bars) <= 1, 'copies of the progress bar left behind:\n' + '\n'.join(bars)


# --- items 6 and 7: Ctrl-C and generate's messages ------------------------------------------------------------------

@pytest.fixture(scope='module')
def checkpoint(assets, tmp_path_factory):
    "A tiny trained checkpoint (context 64 tokens)."
    from faults import config_dict, train_in_process, write_config
    from transformer_nb.checkpoint import checkpoint_name
    d = tmp_path_factory.mktemp('ckpt')
    train_in_process(write_config(d / 'train.yaml', config_dict(assets, d / 'run', steps=2, every=2)))
    return d / 'run' / 'checkpoints' / checkpoint_name(2)


@pytest.mark.parametrize('flag,value', [('--temperature', 'inf'), ('--temperature', 'nan'), ('--top-p', '0'),
                                        ('--top-p', '1.5'), ('--top-k', '0'), ('--max-new-tokens', '-1'),
                                        ('--repetition-penalty', 'inf'), ('--seed', '-3')])
def test_generate_names_a_bad_flag_before_loading(flag, value, tmp_path):
    """The flag is checked first: a run directory that does not even exist is not what the error is about (in this
    process: the console script's own path is tested for the first flag below)."""
    from faults import assert_user_error, command, in_process
    run = command if (flag, value) == ('--temperature', 'inf') else in_process
    r = run('tnb', 'generate', '--run-dir', tmp_path / 'no-such-run', '--prompt', 'x', flag, value)
    line = assert_user_error(r.returncode, r.stderr, f'{flag} ', r.stdout)
    assert line.startswith(f'error: {flag} ') and 'no-such-run' not in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message for a machine without CUDA')
def test_generate_device_error_names_the_flag(tmp_path):
    from faults import assert_user_error, command
    r = command('tnb', 'generate', '--run-dir', tmp_path / 'no-such-run', '--prompt', 'x', '--device', 'cuda')
    line = assert_user_error(r.returncode, r.stderr, '--device cuda', r.stdout)
    assert 'runtime.device' not in line, line


def test_generate_says_how_much_of_a_long_prompt_is_dropped(checkpoint):
    from faults import command
    r = command('tnb', 'generate', '--checkpoint', checkpoint, '--prompt', 'the king ' * 100, '--max-new-tokens', '2', '--seed', '0')
    assert r.returncode == 0, r.stderr
    m = re.search(r"the prompt is (\d+) tokens, the model's context 64: its first (\d+) tokens are dropped", r.stderr)
    assert m and int(m.group(1)) + 1 - 64 == int(m.group(2)), r.stderr


def test_ctrl_c_in_generate_ends_the_text_line(checkpoint):
    "Ctrl-C while text streams out: the text's line is ended, so that `error: interrupted` starts a line of its own."
    import signal, subprocess, threading, time
    from faults import argv_of, env_with
    p = subprocess.Popen(argv_of('tnb', 'generate', '--checkpoint', checkpoint, '--prompt', 'KING.', '--max-new-tokens', '1000000',
                                 '--seed', '1'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_with())
    err, loaded = [], threading.Event()
    def read_err():
        for line in p.stderr:
            err.append(line.decode()); loaded.set() if b'loaded in' in line else None
    t = threading.Thread(target=read_err, daemon=True); t.start()
    out = []
    threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True).start()
    assert loaded.wait(120), ''.join(err)
    time.sleep(1.0)                                    # text is streaming now (a million tokens asked for)
    p.send_signal(signal.SIGINT)
    assert p.wait(60) == 130, ''.join(err)
    t.join(10); time.sleep(0.2)
    assert out and out[0].startswith(b'KING.') and out[0].endswith(b'\n'), repr(out[0][-200:] if out else None)
    assert err[-1].startswith('error: interrupted'), ''.join(err)


def test_second_ctrl_c_says_what_was_saved(assets, tmp_path):
    "Ctrl-C twice while a save is under way: the message names the newest checkpoint there is to resume from."
    import json, signal, time
    from faults import Proc, config_dict, hook_dir, pause_env, write_config
    from transformer_nb.checkpoint import checkpoint_name
    cfg = write_config(tmp_path / 'train.yaml', config_dict(assets, tmp_path / 'run', steps=8, every=2))
    marker = tmp_path / 'paused.json'
    env = pause_env(hook_dir(tmp_path / 'hook'), marker, 'fsync',
                    path=rf'/checkpoints/\.tmp-{checkpoint_name(4)}-[^/]+/manifest\.json$')
    p = Proc('train', '--config', cfg, env=env)
    assert p.wait_until(marker.exists, timeout=150), p.stderr
    p.kill(signal.SIGINT); time.sleep(0.5); p.kill(signal.SIGINT)
    assert p.wait() == 130, p.stderr
    errors = [l for l in p.err if l.startswith('error:')]
    assert len(errors) == 1, p.stderr
    assert re.search(rf"second SIGINT: the checkpoint of step 2 is saved \(\S*{checkpoint_name(2)}\); continue with "
                     r"--resume", errors[0]), errors[0]


# --- item 4: --help -------------------------------------------------------------------------------------------------

def test_help_fits_80_columns_and_shows_each_default_once():
    """Every command of the registry (`tnb NAME --help`), and `tnb`, `train` and `orchestrate` themselves (each
    console script's --help in a process of its own, the commands' in this one)."""
    from faults import commands, in_process
    from transformer_nb.cli import COMMANDS
    calls = [('tnb', [name, '--help']) for name in COMMANDS] + [('tnb', ['--help']), ('train', ['--help']), ('orchestrate', ['--help'])]
    results = [in_process(c, *a, env={'COLUMNS': '80'}) for c, a in calls[:len(COMMANDS)]]
    results += commands([(c, a, {'env': {'COLUMNS': '80'}}) for c, a in calls[len(COMMANDS):]])
    for (c, a), r in zip(calls, results):
        c = ' '.join([c, *a[:-1]])
        assert r.returncode == 0, (c, r.stderr)
        assert r.stdout.startswith(f'usage: {c}'), (c, r.stdout[:100])
        wide = [l for l in r.stdout.split('\nexamples:')[0].splitlines() if len(l) > 80]   # (examples: commands)
        assert not wide, f'{c} --help: lines wider than 80 columns:\n' + '\n'.join(wide)
        text = ' '.join(r.stdout.split())                    # (a default may be wrapped onto the next line)
        for bad in ('(default: None)', '(default: [])', '(default: False)'):
            assert bad not in text, f'{c} --help shows {bad}'
        blocks = re.split(r'\n(?=  -)', r.stdout)            # one block per option
        twice = [b for b in blocks if b.count('(default') > 1]
        assert not twice, f'{c} --help: an option with two defaults:\n' + '\n'.join(twice)
    helps = {' '.join([c, *a[:-1]]): r.stdout for (c, a), r in zip(calls, results)}
    for c in ('train', 'tnb generate'):
        assert 'First:' in helps[c], f'{c} --help does not say what to run first'


# --- item 8: a failed orchestrate leaves nothing it created --------------------------------------------------------

def test_failed_orchestrate_leaves_nothing_behind(tmp_path):
    from faults import assert_user_error, command
    bad = tmp_path / 'image.txt'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00binary')
    new = tmp_path / 'runs' / 'new'
    r = command('orchestrate', '--profile', 'local', '--input', bad, '--run-dir', new, '--max-steps', '2')
    assert_user_error(r.returncode, r.stderr, 'image.txt', r.stdout)
    assert not new.exists(), f"left behind: {sorted(p.name for p in new.iterdir())}"
    old = tmp_path / 'runs' / 'old'
    old.mkdir(); (old / 'notes.txt').write_text('mine')
    r = command('orchestrate', '--profile', 'local', '--input', bad, '--run-dir', old, '--max-steps', '2')
    assert r.returncode == 2, r.stderr
    assert sorted(p.name for p in old.iterdir()) == ['notes.txt']
