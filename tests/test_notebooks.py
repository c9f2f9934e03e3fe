"""House rules for the notebooks that a reader and the docs build rely on."""
import ast, json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))


def code_cells(nb_path):
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    for i, cell in enumerate(nb['cells']):
        if cell['cell_type'] == 'code': yield i, cell, ''.join(cell['source'])


def python_source(src):
    "The cell without nbdev directives and IPython magics/shell escapes."
    return '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('#|', '%', '!')))


DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_imports_stand_alone(nb):
    """When nbdev renders the API docs it runs every cell that holds an import statement anywhere
    (and the exported cells), and no other: such a cell may hold only imports and definitions, or
    the docs build would run code (maybe slow code) that needs cells it skips."""
    bad = []
    for i, cell, src in code_cells(nb):
        if any(l.replace(' ', '').startswith(('#|export', '#|exporti', '#|exports')) for l in src.splitlines()): continue
        try: tree = ast.parse(python_source(src))
        except SyntaxError: continue
        has_import = any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))
        if has_import and not all(isinstance(s, DEFINITIONS) for s in tree.body):
            bad.append(f'cell {i}: {src.splitlines()[0][:60]!r}')
    assert not bad, f'{nb.name}: cells mixing imports with other code (move the imports to a cell of their own):\n' + '\n'.join(bad)


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_titled_and_without_saved_errors(nb):
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    first = ''.join(cells[0]['source']).lstrip()
    assert cells[0]['cell_type'] == 'markdown' and first.startswith('# '), f'{nb.name}: first cell must be a "# Title"'
    errors = [i for i, c in enumerate(cells) for o in c.get('outputs', []) if o.get('output_type') == 'error']
    assert not errors, f'{nb.name}: saved error outputs in cells {errors}'


def test_notebook_map_lists_every_notebook():
    index = (ROOT / 'nbs' / 'index.ipynb').read_text(encoding='utf-8')
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    for nb in NOTEBOOKS:
        if nb.stem == 'index': continue
        assert f'({nb.name})' in index, f'index.ipynb does not link {nb.name}'
        assert f'(nbs/{nb.name})' in readme, f'README.md does not link {nb.name}'


MAX_EXPORTED_CELL_LINES = 60


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_exported_cells_are_short(nb):
    """An exported cell does one thing and fits on a screen: at most 60 lines (split a long function into helpers,
    and a long class across cells with fastcore's `@patch`, with prose between them)."""
    long = [f'cell {i} ({len(src.splitlines())} lines): {src.splitlines()[1][:60]!r}' for i, cell, src in code_cells(nb)
            if src.splitlines() and src.splitlines()[0].replace(' ', '') in ('#|export', '#|exporti', '#|exports')
            and len(src.splitlines()) > MAX_EXPORTED_CELL_LINES]
    assert not long, f'{nb.name}: exported cells over {MAX_EXPORTED_CELL_LINES} lines:\n' + '\n'.join(long)
