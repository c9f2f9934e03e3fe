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


MAX_FUNCTION_LINES = 60     # a function or method, decorators included
MAX_CLASS_LINES = 150       # a class, defined whole: in one exported cell, and in the module
MAX_EXPORTED_CELL_LINES = 60  # an exported cell that defines no class
EXPORTED = ('#|export', '#|exporti', '#|exports')
PKG = ROOT / 'transformer_nb'
MODULES = sorted(p for p in PKG.glob('*.py') if not p.stem.startswith('_'))


def span(node) -> int:
    "Lines of a definition, from its first decorator to its last line."
    return node.end_lineno - min([node.lineno] + [d.lineno for d in node.decorator_list]) + 1


def defines_class(src: str) -> bool:
    try: tree = ast.parse(python_source(src))
    except SyntaxError: return False
    return any(isinstance(s, ast.ClassDef) for s in tree.body)


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.name)
def test_exported_cells_are_short(nb):
    """An exported cell does one thing and fits on a screen or two: at most 60 lines, or 150 when it
    defines a class (a class is defined whole in one cell; a bigger one is split into components, with
    prose between them, never into `@patch` fragments)."""
    long = []
    for i, cell, src in code_cells(nb):
        lines = src.splitlines()
        if not lines or lines[0].replace(' ', '') not in EXPORTED: continue
        cap = MAX_CLASS_LINES if defines_class(src) else MAX_EXPORTED_CELL_LINES
        if len(lines) > cap: long.append(f'cell {i} ({len(lines)} lines, at most {cap}): {lines[1][:60]!r}')
    assert not long, f'{nb.name}: exported cells too long:\n' + '\n'.join(long)


def too_long(source: str, name: str = '<module>') -> list[str]:
    "The functions (methods included) over MAX_FUNCTION_LINES and the classes over MAX_CLASS_LINES in `source`."
    bad = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and span(n) > MAX_FUNCTION_LINES:
            bad.append(f'{name}:{n.lineno}: def {n.name} is {span(n)} lines (at most {MAX_FUNCTION_LINES})')
        if isinstance(n, ast.ClassDef) and span(n) > MAX_CLASS_LINES:
            bad.append(f'{name}:{n.lineno}: class {n.name} is {span(n)} lines (at most {MAX_CLASS_LINES}: split it into components)')
    return bad


@pytest.mark.parametrize('module', MODULES, ids=lambda p: p.name)
def test_functions_and_classes_are_short(module):
    "Measured on the exported library: every function and method at most 60 lines, every class at most 150."
    bad = too_long(module.read_text(encoding='utf-8'), module.name)
    assert not bad, '\n'.join(bad)


PATCHERS = {'patch', 'patch_to'}


def patch_uses(source: str, name: str = '<module>') -> list[str]:
    """Every use of fastcore's `patch` / `patch_to`: imported from fastcore, or applied as a decorator
    (`@patch`, `@patch(...)`, `@fastcore.basics.patch`, `@patch_to(C)`)."""
    def patcher(d):
        d = d.func if isinstance(d, ast.Call) else d
        return (isinstance(d, ast.Name) and d.id in PATCHERS) or (isinstance(d, ast.Attribute) and d.attr in PATCHERS)
    bad = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.ImportFrom) and (n.module or '').startswith('fastcore'):
            bad += [f'{name}:{n.lineno}: imports {a.name} from {n.module}' for a in n.names if a.name in PATCHERS]
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for d in n.decorator_list:
                if not patcher(d): continue
                args = getattr(n, 'args', None)
                first = args.args[0] if args and args.args else None
                on = f' onto {ast.unparse(first.annotation)}' if first is not None and first.annotation else ''
                bad.append(f'{name}:{d.lineno}: @{ast.unparse(d)} def {n.name}{on}')
    return bad


@pytest.mark.parametrize('module', MODULES, ids=lambda p: p.name)
def test_no_patch(module):
    """No fastcore `@patch` in the package: a class is defined whole, so that static analysis (editor and
    Jupyter completion, go-to-definition) sees every method where the class is."""
    bad = patch_uses(module.read_text(encoding='utf-8'), module.name)
    assert not bad, '\n'.join(bad) + '\n(define the method in the class; a class too big for one cell is split into components)'


def test_the_code_checks_can_fail():
    src = """
from fastcore.basics import patch
import fastcore.basics
class A:
    def f(self): pass
@patch
def g(self: A): pass
@patch(as_prop=True)
def h(self: A): pass
@fastcore.basics.patch
def k(self: A, x): pass
@staticmethod
def ok(x): pass
""" + 'def long():\n' + '    x = 1\n' * 60
    found = patch_uses(src, 'm.py')
    assert found == ['m.py:2: imports patch from fastcore.basics', 'm.py:6: @patch def g onto A',
                     'm.py:8: @patch(as_prop=True) def h onto A', 'm.py:10: @fastcore.basics.patch def k onto A'], found
    assert too_long(src, 'm.py') == ['m.py:14: def long is 61 lines (at most 60)']
    assert too_long('class C:\n' + '    x = 1\n' * 150, 'c.py') == ['c.py:1: class C is 151 lines (at most 150: split it into components)']
    assert defines_class('#| export\nclass C: pass') and not defines_class('#| export\ndef f(): pass')


MAX_LINE = 120


@pytest.mark.parametrize('module', sorted(p.name for p in (ROOT / 'transformer_nb').glob('*.py') if p.name != '_modidx.py'))
def test_exported_lines_fit(module):
    """The exported modules are what tracebacks, editors and GitHub show: no line over 120 characters (the limit of
    pyproject's [tool.ruff]; `make test` runs `ruff check` for the rest). nbdev writes the first line of `__all__`
    itself (it wraps the list at 120 characters, then puts `__all__ = ` in front): that line is exempt."""
    lines = (ROOT / 'transformer_nb' / module).read_text(encoding='utf-8').splitlines()
    long = [f'{module}:{i}: {len(l)} characters' for i, l in enumerate(lines, 1)
            if len(l) > MAX_LINE and not l.startswith('__all__ = [')]
    assert not long, 'lines over 120 characters (wrap them in the notebook):\n' + '\n'.join(long)
