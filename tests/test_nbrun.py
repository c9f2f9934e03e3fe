"""tools/nbrun.py, the notebooks' freshness check of `make test`: it passes on a notebook whose stored outputs are what
its cells print, and fails on a planted stale output, on a cell that prints with nothing stored, on a stored
output that no longer appears, and on changed words in a `#| varies` cell (whose numbers alone may change). Each
case runs a small notebook in a real Jupyter kernel."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

ROOT = Path(__file__).resolve().parent.parent
NBRUN = ROOT / 'tools' / 'nbrun.py'

CELLS = [
    "print('three words here')",
    "#| varies\nimport time\nt0 = time.perf_counter(); print(f'took {time.perf_counter() - t0:.6f} s')",
    "#| slow\nprint('only with --write')",
    "x = 6 * 7\nx",
    "y = 1   # prints nothing",
]


def nbrun(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(NBRUN), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def stored(tmp_path_factory) -> Path:
    "A notebook whose outputs `--write` stored."
    path = tmp_path_factory.mktemp('nb') / 'demo.ipynb'
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nb, path)
    r = nbrun('--write', path)
    assert r.returncode == 0, r.stdout + r.stderr
    return path


def planted(stored: Path, tmp_path: Path, change) -> Path:
    "A copy of the stored notebook with `change(cells)` applied to it."
    nb = nbformat.read(stored, as_version=4)
    change(nb.cells)
    path = tmp_path / 'demo.ipynb'
    nbformat.write(nb, path)
    return path


def test_write_stores_what_the_cells_print(stored):
    cells = nbformat.read(stored, as_version=4).cells
    assert cells[0].outputs[0]['text'] == 'three words here\n'
    assert cells[2].outputs[0]['text'] == 'only with --write\n'          # slow cells run with --write
    assert cells[3].outputs[0]['data']['text/plain'] == '42'
    assert cells[4].outputs == []


def test_fresh_notebook_passes(stored):
    r = nbrun('--check', stored)
    assert r.returncode == 0 and 'every output fresh' in r.stdout, r.stdout + r.stderr


def test_stale_output_fails(stored, tmp_path):
    def stale(cells): cells[0].outputs[0]['text'] = 'three old words\n'
    r = nbrun('--check', planted(stored, tmp_path, stale))
    assert r.returncode == 1
    assert 'cell 0' in r.stdout and 'stored output differs' in r.stdout and '-three old words' in r.stdout


def test_missing_output_fails(stored, tmp_path):
    def missing(cells): cells[3].outputs = []
    r = nbrun('--check', planted(stored, tmp_path, missing))
    assert r.returncode == 1 and 'cell 3' in r.stdout and 'prints, but nothing is stored' in r.stdout


def test_output_of_a_silent_cell_fails(stored, tmp_path):
    def extra(cells): cells[4].outputs = [nbformat.v4.new_output('stream', name='stdout', text='left over\n')]
    r = nbrun('--check', planted(stored, tmp_path, extra))
    assert r.returncode == 1 and 'cell 4' in r.stdout and 'prints nothing now' in r.stdout


def test_varies_masks_numbers_not_words(stored, tmp_path):
    def numbers(cells): cells[1].outputs[0]['text'] = 'took 12.345678 s\n'
    assert nbrun('--check', planted(stored, tmp_path, numbers)).returncode == 0
    def words(cells): cells[1].outputs[0]['text'] = 'lasted 12.345678 s\n'
    r = nbrun('--check', planted(stored, tmp_path, words))
    assert r.returncode == 1 and 'cell 1' in r.stdout


def test_slow_cells_keep_their_outputs(stored, tmp_path):
    def other(cells): cells[2].outputs[0]['text'] = 'anything: not run by --check\n'
    assert nbrun('--check', planted(stored, tmp_path, other)).returncode == 0


def test_a_failing_cell_fails_the_check(stored, tmp_path):
    def broken(cells): cells[3].source = 'x = 1 / 0'
    r = nbrun('--check', planted(stored, tmp_path, broken))
    assert r.returncode == 1 and 'ZeroDivisionError' in r.stdout


def test_varies_masks_what_changes_between_runs_and_machines():
    "The masks of a `#| varies` cell: the same words pass, whatever the figures, the machine or the timing."
    sys.path.insert(0, str(ROOT / 'tools'))
    from nbrun import mask_varying as mask
    same = [('prepared in 0.1 s (1 worker)', 'prepared in 9.1 s (2 workers; 571.65k characters/s (other processes used '
             '66% of the CPU time))'),
            ('eta 59.9s | 999k tok/s', 'eta 1m01s | 1.20M tok/s'),
            ('on cpu (AMD EPYC), torch 2.13.0+cpu', 'on cpu (Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz), torch 2.12.1+cu130'),
            ('"sha256": "f5a0c3d2e1b4", "share": null', '"sha256": "05a0c3d2e1b4", "share": 0.66'),
            ('-----  ---', '---------  ------')]
    for a, b in same: assert mask(a) == mask(b), (mask(a), mask(b))
    assert mask('loss 5.49 held out') != mask('loss 5.49 trained on')        # words still count
