"""Run the notebooks in a real Jupyter kernel, as JupyterLab runs them: to check that every stored output is what
its cell prints now (`make test-nbs`), or to store fresh outputs (`make nbs`).

    python tools/nbrun.py --check [NOTEBOOK ...]     # run (slow cells skipped), compare with the stored outputs
    python tools/nbrun.py --write [NOTEBOOK ...]     # run every cell (slow ones too), store the outputs
    python tools/nbrun.py --write --keep-slow NB     # the same, but slow cells keep their stored outputs (not run)
    python tools/nbrun.py --check --jobs 2           # two notebooks at a time, each in its own kernel
    python tools/nbrun.py --scrub [NOTEBOOK ...]     # only scrub the stored outputs of machine paths

Each notebook runs top to bottom in a fresh IPython kernel (ipykernel, through nbclient), in the notebook's own
folder, with display hooks, inline plots and live charts as a reader sees them. Cells marked `#| eval: false` never
run; cells marked `#| slow` run only with --write (the check keeps the outputs of the last `make nbs`: run it again
whenever the code such a cell calls changes).

What is compared, per cell: the text a cell printed (stdout and stderr, each as one text however it was chunked),
its results and displays (plain text, Markdown, HTML), and its errors. Images are not compared (a plot is redrawn by
`make nbs`), but a cell that now draws one must have one stored. Machine paths are written as `make nbs` stores them
(a temporary folder as `$TMP`, the checkout relative, the home folder as `~`), memory addresses as `0x…` and the line
numbers of `show_doc`'s source links as `#L…`.
A cell whose numbers cannot repeat (timings, throughput, the load of the machine) carries the line `#| varies`:
its numbers are masked and its words still compared. A difference, or a cell that prints with nothing stored (or
the reverse), fails the check with the notebook, the cell and a diff.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP = re.compile(re.escape(tempfile.gettempdir().rstrip('/')) + r'''/[^/\s'"`]+''')


def scrub_text(text: str, root: Path = ROOT) -> str:
    "A temporary folder as `$TMP`, a path in the checkout relative to it, the home folder as `~` (the corpus cache)."
    return TMP.sub('$TMP', text).replace(str(root) + '/', '').replace(str(Path.home()) + '/', '~/')


def scrub_notebook(path: Path) -> int:
    "Scrub the saved outputs of one notebook in place; returns how many outputs changed."
    nb = json.loads(path.read_text(encoding='utf-8'))
    changed = 0
    def fix(v):
        nonlocal changed
        if isinstance(v, list): new = [scrub_text(s) for s in v]
        elif isinstance(v, str): new = scrub_text(v)
        else: return v
        changed += new != v
        return new
    for cell in nb.get('cells', []):
        for out in cell.get('outputs', []):
            if 'text' in out: out['text'] = fix(out['text'])
            if 'traceback' in out: out['traceback'] = fix(out['traceback'])
            for mime in ('text/plain', 'text/html', 'text/markdown'):
                if mime in out.get('data', {}): out['data'][mime] = fix(out['data'][mime])
    if changed: path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    return changed


ADDRESS = re.compile(r'0x[0-9a-fA-F]{6,}')
SOURCE_LINE = re.compile(r'(\.py)#L\d+')    # show_doc's [source] links: the line moves with every edit above it
# in a `#| varies` cell: the machine (CPU model, torch build), hex digests, then every number with what is glued to
# it (1.20M, 4m05s, 12,345, 3%, 2.13.0+cpu) or a missing one (null, None, nan), then a rate with its conditions and the other processes' share of the CPU (both
# shown only for work that took a second or more: whether they appear depends on the machine's speed), the plural
# a count chooses, and the widths of table columns and rules
MACHINE = re.compile(r'\b(AMD|Intel|Apple|ARM|Ampere|Neoverse|Graviton)\b(\([^()\n]*\)|[^,;()\n])*|\btorch \d[\w.+]*')
NUMBER = re.compile(r'[-+]?\.?\d[\w.,:%+-]*|\b(null|None|nan|NaN)\b')    # (a figure, or its absence)
HEX = re.compile(r'\b[0-9a-f]{8,}\b')                                     # digests, ids
RATE = re.compile(r'[,:;]?\s*# [A-Za-z]+/s(\s*\([^()]*\))?')
OTHERS = re.compile(r'[,;]?\s*other processes used # of the (machine\'s )?CPU time( meanwhile)?')
PLURAL = re.compile(r'(# [a-z]+?)(?<=ss)es\b|(# [a-z]+?[^s])s\b')


def mask_varying(text: str) -> str:
    "The words of `text` without what changes from run to run and machine to machine (see above)."
    text = OTHERS.sub('', RATE.sub('', NUMBER.sub('#', HEX.sub('#', MACHINE.sub('<machine>', text)))))
    text = PLURAL.sub(lambda m: m.group(1) or m.group(2), text)
    return re.sub(r'[ \t]+', ' ', re.sub(r'-{3,}', '---', re.sub(r'\(\s*\)', '', text)))


def directives(cell) -> dict[str, str]:
    "The `#| name: value` lines at the top of a code cell, as {name: value} ('' for a bare `#| name`)."
    out = {}
    for line in cell.source.splitlines():
        if not line.strip(): continue
        if not line.replace(' ', '').startswith('#|'): break
        name, _, value = line.split('|', 1)[1].strip().partition(':')
        out[name.strip()] = value.strip()
    return out


def runs(cell, slow: bool) -> bool:
    "Whether the cell is run: code, not `#| eval: false`, and not `#| slow` or `#| notest` unless `slow`."
    if cell.cell_type != 'code': return False
    d = directives(cell)
    return d.get('eval', 'true').lower() != 'false' and (slow or not {'slow', 'notest'} & set(d))


def _text(v) -> str:
    return ''.join(v) if isinstance(v, list) else (v or '')


def shown(outputs, varies: bool = False) -> str:
    "The comparable text of a cell's outputs (see the module's docstring)."
    streams, rest = {'stdout': '', 'stderr': ''}, []
    for o in outputs:
        kind = o.get('output_type')
        if kind == 'stream': streams[o.get('name', 'stdout')] = streams.get(o.get('name', 'stdout'), '') + _text(o.get('text'))
        elif kind == 'error': rest.append(f"[error] {o.get('ename')}: {o.get('evalue')}")
        elif kind in ('execute_result', 'display_data'):
            data = o.get('data', {})
            if any(k.startswith('image/') for k in data): rest.append('[image]')
            elif text := next((m for m in ('text/markdown', 'text/html', 'text/plain') if m in data), None):
                rest.append(f'[{text}]\n' + _text(data[text]))
            else: rest.append(f"[{', '.join(sorted(data))}]")     # another kind of output: its presence counts
    parts = [f'[{k}]\n{v}' for k, v in streams.items() if v] + rest
    text = SOURCE_LINE.sub(r'\1#L…', ADDRESS.sub('0x…', scrub_text('\n'.join(parts))))
    # a progress bar rewrites its line with '\r': only the last state of each line counts
    text = '\n'.join(line.rsplit('\r', 1)[-1].rstrip() for line in text.split('\n')).strip()
    return mask_varying(text) if varies else text


def execute(path: Path, slow: bool, timeout: int):
    "Run the notebook at `path` in a fresh kernel; returns (notebook with fresh outputs, {cell index: stored outputs})."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    stored = {i: c.get('outputs', []) for i, c in enumerate(nb.cells) if c.cell_type == 'code'}
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', allow_errors=False,
                            resources={'metadata': {'path': str(path.parent)}})
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if runs(cell, slow): client.execute_cell(cell, i)
    return nb, stored


def check(path: Path, timeout: int) -> list[str]:
    "The stale outputs of one notebook, each as a message with a diff ([] when every output is fresh)."
    try: nb, stored = execute(path, slow=False, timeout=timeout)
    except Exception as e:       # a failing cell, a timeout, a kernel that died: the notebook fails, the others go on
        return [f"{path.name}: {type(e).__name__}:\n{str(e)[-3000:]}"]
    problems = []
    for i, cell in enumerate(nb.cells):
        if not runs(cell, slow=False): continue
        varies = 'varies' in directives(cell)
        now, before = shown(cell.outputs, varies), shown(stored[i], varies)
        if now == before: continue
        first = next((line for line in cell.source.splitlines() if not line.startswith('#|')), '')[:70]
        what = ('prints, but nothing is stored' if not before else 'has a stored output but prints nothing now'
                if not now else 'stored output differs from what it prints now')
        diff = '\n'.join(list(difflib.unified_diff(before.splitlines(), now.splitlines(), 'stored', 'now',
                                                   lineterm='', n=1))[:40])
        problems.append(f"{path.name}, cell {i} ({first!r}): {what}\n{diff}")
    return problems


def write(path: Path, timeout: int, slow: bool = True) -> None:
    "Run every cell (slow ones too, unless not `slow`: they keep their outputs) and store the fresh outputs, scrubbed."
    import nbformat
    nb, _ = execute(path, slow=slow, timeout=timeout)
    for cell in nb.cells:
        if cell.cell_type == 'code': cell.execution_count = None
    nbformat.write(nb, path)
    scrub_notebook(path)


def one(path: Path, mode: str, timeout: int, keep_slow: bool = False) -> int:
    t0 = time.time()
    if mode == 'write':
        try: write(path, timeout, slow=not keep_slow)
        except Exception as e:   # nothing is stored for a notebook that failed; the others go on
            print(f"{path.name}: {type(e).__name__}, outputs not stored:\n{str(e)[-3000:]}", flush=True)
            return 1
        print(f"{path.name}: outputs stored ({time.time() - t0:.0f} s)", flush=True)
        return 0
    problems = check(path, timeout)
    print('\n\n'.join(problems) if problems else f"{path.name}: every output fresh ({time.time() - t0:.0f} s)",
          flush=True)
    return 1 if problems else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument('--check', action='store_const', dest='mode', const='check')
    mode.add_argument('--write', action='store_const', dest='mode', const='write')
    mode.add_argument('--scrub', action='store_const', dest='mode', const='scrub')
    ap.add_argument('notebooks', nargs='*', type=Path, help='default: every nbs/*.ipynb')
    ap.add_argument('--jobs', type=int, default=1, help='notebooks at a time, each in its own kernel (default 1)')
    ap.add_argument('--timeout', type=int, default=900, help='seconds a cell may run (default 900)')
    ap.add_argument('--keep-slow', action='store_true',
                    help="with --write: slow (and notest) cells are not run and keep their stored outputs (for a "
                         "change that they do not depend on)")
    ap.add_argument('--no-summary', action='store_true', help=argparse.SUPPRESS)     # (one notebook of --jobs N)
    a = ap.parse_args(argv)
    if a.keep_slow and a.mode != 'write': ap.error('--keep-slow goes with --write (--check never runs slow cells)')
    nbs = [p.resolve() for p in a.notebooks] or sorted((ROOT / 'nbs').glob('*.ipynb'))
    if missing := [str(p) for p in nbs if not p.is_file()]: sys.exit(f"no such notebook: {', '.join(missing)}")
    if a.mode == 'scrub':
        for p in nbs: print(f'{p.name}: {scrub_notebook(p)} output(s) scrubbed')
        return
    t0 = time.time()
    if a.jobs <= 1 or len(nbs) == 1: failed = sum(one(p, a.mode, a.timeout, a.keep_slow) for p in nbs)
    else:
        # each notebook in a process of its own (a kernel each): a failure in one does not stop the others
        cmd = lambda p: [sys.executable, __file__, f'--{a.mode}', '--timeout', str(a.timeout), '--no-summary',
                         *(['--keep-slow'] if a.keep_slow else []), str(p)]
        with ThreadPoolExecutor(a.jobs) as ex:
            done = ex.map(lambda p: subprocess.run(cmd(p), capture_output=True, text=True, env=os.environ), nbs)
            failed = 0
            for r in done:
                # (the kernel's notice that it listens on localhost TCP without encryption is noise here)
                out = [line for line in (r.stdout + r.stderr).splitlines() if 'running over TCP without' not in line]
                print('\n'.join(out).rstrip(), flush=True)
                failed += r.returncode != 0
    if a.no_summary: sys.exit(1 if failed else 0)
    print(f"\n{len(nbs) - failed} of {len(nbs)} notebooks {'stored' if a.mode == 'write' else 'fresh'} "
          f"({time.time() - t0:.0f} s)" + ('' if not failed else f"; {failed} failed"))
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
