"""Execute notebooks in place so that their outputs (tables, plots) are saved for the docs site.

    python tools/run_nbs.py [NOTEBOOK ...]          # default: every nbs/*.ipynb, in order
    python tools/run_nbs.py --scrub [NOTEBOOK ...]  # only scrub the outputs already saved

Cells are run top to bottom in one in-process IPython shell per notebook (execnb, the engine
behind `nbdev-test`), from the notebook's own folder, with `#| slow` cells included: this is
how the committed outputs that the documentation shows are produced. Stops at the first error.

The saved outputs are then scrubbed of machine-specific paths: a temporary folder
(`/tmp/tnb-cli-x8k2.../runs/tiny`) is written `$TMP/runs/tiny`, and a path inside this checkout
is written relative to it, and the home folder as `~`, so that pages show no temporary paths and
outputs do not change with every run.
"""
import json, os, re, sys, tempfile, time
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


def not_run(cell) -> bool:
    "A cell marked `#| eval: false`: exported, never run (e.g. the package's `__main__` module in 12b_main)."
    return cell.cell_type == 'code' and any(l.replace(' ', '') == '#|eval:false' for l in cell.source.splitlines())


def run_notebook(path: Path):
    from execnb.shell import CaptureShell
    path = path.resolve()
    cwd = os.getcwd()
    os.chdir(path.parent)
    t0 = time.time()
    try:
        shell = CaptureShell(mpl_format='png')
        shell.execute(path, path, exc_stop=True, preproc=not_run)
    finally:
        os.chdir(cwd)
    n = scrub_notebook(path)
    print(f"ran {path.name} in {time.time() - t0:.1f}s" + (f" ({n} output(s) scrubbed of paths)" if n else ''), flush=True)


def main(argv):
    scrub_only = '--scrub' in argv
    argv = [a for a in argv if a != '--scrub']
    nbs = [Path(a) for a in argv] or sorted((ROOT / 'nbs').glob('*.ipynb'))
    for nb in nbs:
        if scrub_only: print(f'{nb}: {scrub_notebook(Path(nb))} output(s) scrubbed')
        else: run_notebook(nb)


if __name__ == '__main__':
    main(sys.argv[1:])
