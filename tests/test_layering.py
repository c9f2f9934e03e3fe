"""The library's layering, measured from the code: modules import only modules before them.

Reads `transformer_nb/*.py` with `ast` (nothing is imported or run), collects every import of a
project module, at module level or inside a function or method, in all its spellings
(`from .x import y`, `from . import x`, `from transformer_nb.x import y`, `import transformer_nb.x`,
`from transformer_nb import x`), and fails on
- an import inside a function (optional third-party packages may be imported lazily; project
  modules may not: a lazy import is how a cycle hides);
- an import that goes up, or sideways, in the order below (the notebook order);
- a module that is not in the order (place a new module in ORDER, where its notebook sorts);
- a cycle (implied by the order, checked on its own so the message shows it);
- a private name (`_x`) imported from another project module (`from .x import _y`,
  `from transformer_nb.x import _y`): what one module needs from another is public.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / 'transformer_nb'
ORDER = ['base', 'config', 'device', 'sources', 'tokenizer', 'data', 'rope', 'attention', 'layers', 'model',
         'generate', 'checkpoint', 'hf', 'parallel', 'optim', 'metrics', 'display', 'step', 'run', 'trainer',
         'lr_find', 'orchestrate', 'bench', 'quality', 'cli']
PACKAGE = '__init__'      # the package itself (`import transformer_nb` for `__version__`): below everything
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def project_imports(source: str, package: str = 'transformer_nb'):
    "Yield (module, line, inside_function) for each import of a project module in `source`."
    def targets(node):
        if isinstance(node, ast.ImportFrom):
            if node.level:                                            # relative: from .x import y / from . import x
                if node.module: yield node.module.split('.')[0]
                else: yield from (a.name for a in node.names)
            elif node.module == package: yield from (a.name for a in node.names)
            elif node.module and node.module.startswith(package + '.'): yield node.module.split('.')[1]
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split('.')
                if parts[0] == package: yield parts[1] if len(parts) > 1 else PACKAGE

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            for t in targets(child): yield t, child.lineno, in_function
            yield from walk(child, in_function or isinstance(child, FUNCTIONS))
    yield from walk(ast.parse(source), False)


def modules():
    return sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))


def import_graph():
    "{module: [(imported, line, inside_function), ...]} for every module of the package."
    return {m: list(project_imports((PKG / f'{m}.py').read_text(encoding='utf-8'))) for m in modules()}


def rank(m): return -1 if m == PACKAGE else ORDER.index(m)


def test_every_module_has_a_place():
    assert not [m for m in modules() if m not in ORDER], f'modules missing from ORDER in {__file__}'


@pytest.mark.parametrize('module', modules())
def test_no_project_import_inside_a_function(module):
    bad = [f'{module}.py:{line}: imports {t} inside a function' for t, line, fn in import_graph()[module] if fn]
    assert not bad, '\n'.join(bad) + '\n(import it at the top of the module; a module that needs it lower down is misplaced)'


@pytest.mark.parametrize('module', modules())
def test_imports_go_down_the_order(module):
    if module not in ORDER: pytest.skip('not in ORDER (test_every_module_has_a_place fails)')
    bad = [f'{module}.py:{line}: imports {t}, which comes after it (or is unknown)'
           for t, line, _ in import_graph()[module] if t != PACKAGE and (t not in ORDER or rank(t) >= rank(module))]
    assert not bad, '\n'.join(bad) + f'\norder: {" -> ".join(ORDER)}'


def find_cycle(edges: dict) -> list | None:
    "A cycle in the directed graph `edges` ({node: {node, ...}}) as a list of nodes, or None."
    state, stack = {}, []
    def visit(n):
        state[n] = 'open'; stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 'open': return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)): return c
        state[n] = 'done'; stack.pop()
    for n in sorted(edges):
        if n not in state and (c := visit(n)): return c
    return None


def test_no_cycle():
    edges = {m: {t for t, _, _ in imps if t != PACKAGE} for m, imps in import_graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def private_imports(source: str, package: str = 'transformer_nb'):
    "Yield (module, name, line) for each private name (`_x`, not `__x__`) imported from a project module."
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom): continue
        if node.level: module = node.module or '.'
        elif node.module == package or (node.module or '').startswith(package + '.'): module = node.module
        else: continue
        for a in node.names:
            if a.name.startswith('_') and not (a.name.startswith('__') and a.name.endswith('__')):
                yield module, a.name, node.lineno


@pytest.mark.parametrize('module', modules())
def test_no_private_names_imported(module):
    bad = [f'{module}.py:{line}: imports the private name {name} from {frm}'
           for frm, name, line in private_imports((PKG / f'{module}.py').read_text(encoding='utf-8'))]
    assert not bad, '\n'.join(bad) + '\n(give it a public name, or move it to the module that uses it)'


def test_the_checks_can_fail():
    "The detector sees every spelling of a project import, and where it happens."
    src = '''
import os
from . import config
from .data import prepare
import transformer_nb.model as m
from transformer_nb.hf import load_hf
from transformer_nb import cli
import transformer_nb
def f():
    import transformers
    from .training import Trainer
class C:
    def g(self):
        if True:
            from transformer_nb.bench import x
h = lambda: __import__('os')
'''
    found = sorted(project_imports(src))
    assert found == sorted([('config', 3, False), ('data', 4, False), ('model', 5, False), ('hf', 6, False),
                            ('cli', 7, False), (PACKAGE, 8, False), ('training', 11, True), ('bench', 15, True)])
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None
    src = """
from .base import _existing, say
from transformer_nb.attention import attention_shape, _attention_shape as shape
from transformer_nb import __version__
from . import _modidx
from os.path import _joinrealpath
def f():
    from .cli import _parser
"""
    assert sorted(private_imports(src)) == [('.', '_modidx', 5), ('base', '_existing', 2), ('cli', '_parser', 8),
                                            ('transformer_nb.attention', '_attention_shape', 3)]
