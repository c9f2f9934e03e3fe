"""The commands in a real terminal (issue 18): files, progress output, help and messages as a user meets them."""
import os
import re
import stat
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
    from transformer_nb.training import Trainer
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


def test_training_output_in_an_80_column_terminal(assets, tmp_path):
    from faults import argv_of, config_dict, env_with, write_config
    d = config_dict(assets, tmp_path / 'run', steps=8, every=2, keep=1)       # keep 1: "pruned ..." on every save
    d['runtime']['evaluation'] = {'every_n_steps': 4, 'max_batches': 1}
    cfg = write_config(tmp_path / 'train.yaml', d)
    env = env_with({'COLUMNS': '80', 'LINES': '30', 'TERM': 'xterm'})
    rc, raw = run_in_terminal(argv_of('train', '--config', cfg), env, cwd=tmp_path)    # run paths are short: relative
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
