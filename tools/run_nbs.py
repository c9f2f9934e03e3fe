"""Execute notebooks in place so that their outputs (tables, plots) are saved for the docs site.

    python tools/run_nbs.py [NOTEBOOK ...]      # default: every nbs/*.ipynb, in order

Cells are run top to bottom in one in-process IPython shell per notebook (execnb, the engine
behind `nbdev-test`), from the notebook's own folder, with `#| slow` cells included: this is
how the committed outputs that the documentation shows are produced. Stops at the first error.
"""
import os, sys, time
from pathlib import Path

from execnb.shell import CaptureShell

def run_notebook(path: Path):
    path = path.resolve()
    cwd = os.getcwd()
    os.chdir(path.parent)
    t0 = time.time()
    try:
        shell = CaptureShell(mpl_format='png')
        shell.execute(path, path, exc_stop=True)
    finally:
        os.chdir(cwd)
    print(f"ran {path.name} in {time.time() - t0:.1f}s", flush=True)

def main(argv):
    root = Path(__file__).resolve().parent.parent
    nbs = [Path(a) for a in argv] or sorted((root / 'nbs').glob('*.ipynb'))
    for nb in nbs:
        run_notebook(nb)

if __name__ == '__main__':
    main(sys.argv[1:])
