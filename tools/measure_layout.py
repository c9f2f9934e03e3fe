"""Measure the layout of transformer_nb: project import graph, largest function, largest exported cell.

Usage: python tools/measure_layout.py [ROOT]   (ROOT defaults to the repository root; e.g. a `git archive` of main)
"""
import ast, json, sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
pkg = root/'transformer_nb'
mods = sorted(p.stem for p in pkg.glob('*.py') if not p.stem.startswith('_'))

def project_imports(tree, me):
    "Yield (target_module, lineno, in_function) for every project import in `tree`."
    def visit(node, in_fn):
        for ch in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(ch, ast.ImportFrom):
                if ch.level: base = ch.module or ''
                elif (ch.module or '').split('.')[0] == 'transformer_nb': base = ch.module[len('transformer_nb'):].lstrip('.')
                else: base = None
                if base is not None:
                    if base: yield base.split('.')[0], ch.lineno, in_fn
                    else:
                        for a in ch.names: yield a.name, ch.lineno, in_fn
            elif isinstance(ch, ast.Import):
                for a in ch.names:
                    parts = a.name.split('.')
                    if parts[0] == 'transformer_nb': yield (parts[1] if len(parts) > 1 else '__init__'), ch.lineno, in_fn
            yield from visit(ch, fn)
    yield from visit(tree, False)

edges, fns = set(), []
for m in mods:
    src = (pkg/f'{m}.py').read_text()
    tree = ast.parse(src)
    for tgt, line, in_fn in project_imports(tree, m):
        edges.add((m, tgt, 'function' if in_fn else 'module'))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            fns.append((node.end_lineno - node.lineno + 1, f'{m}.{node.name}'))

print('import edges (importer -> imported [where]):')
for a, b, w in sorted(edges): print(f'  {a} -> {b} [{w}]')
fns.sort(reverse=True)
print('largest functions:', ', '.join(f'{n} ({l} lines)' for l, n in fns[:5]))
cells = []
for nb in sorted((root/'nbs').glob('*.ipynb')):
    for c in json.loads(nb.read_text())['cells']:
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        if any(l.strip().startswith('#| export') or l.strip().startswith('#|export') for l in src.splitlines()[:3]):
            cells.append((len(src.splitlines()), nb.name))
cells.sort(reverse=True)
print('largest exported cells:', ', '.join(f'{nb} ({l} lines)' for l, nb in cells[:5]))
print('exported cells over 60 lines:', sum(l > 60 for l, _ in cells), 'of', len(cells))
