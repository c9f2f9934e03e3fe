"""Format the exported cells of the notebooks with ruff (the settings in pyproject.toml), or check them.

    python tools/format_nbs.py            # rewrite the exported cells that ruff would change
    python tools/format_nbs.py --check    # list them and exit 1 (what `make test` runs)

Only cells exported to the library (`#| export`, `#| exporti`, `#| exports`) are formatted: they become
transformer_nb/*.py, which is what tracebacks, editors and GitHub show. Demo and test cells keep the
notebook's compact style. The exported modules are then linted with `ruff check transformer_nb`."""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORT = ('#|export', '#|exporti', '#|exports')


def exported_cells(nb: dict):
    "(index, source) of each exported code cell."
    for i, c in enumerate(nb['cells']):
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        first = src.lstrip().splitlines()[0].replace(' ', '') if src.strip() else ''
        if c['cell_type'] == 'code' and first.startswith(EXPORT):
            yield i, src


def formatted(sources: dict) -> dict:
    "{key: source} -> {key: source as ruff formats it}, one ruff call for all."
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for k, src in sources.items():
            f = Path(tmp) / f'c{len(files)}.py'
            f.write_text(src + '\n', encoding='utf-8')
            files[k] = f
        cmd = [sys.executable, '-m', 'ruff', 'format', '--config', str(ROOT / 'pyproject.toml'), '--quiet', tmp]
        subprocess.run(cmd, check=True)
        return {k: f.read_text(encoding='utf-8').rstrip('\n') for k, f in files.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--check', action='store_true', help='list the cells that would change; exit 1 if any')
    p.add_argument('notebooks', nargs='*', type=Path, help='default: nbs/*.ipynb')
    a = p.parse_args(argv)
    paths = a.notebooks or sorted((ROOT / 'nbs').glob('*.ipynb'))
    nbs = {path: json.loads(path.read_text(encoding='utf-8')) for path in paths}
    sources = {(path, i): src for path, nb in nbs.items() for i, src in exported_cells(nb)}
    new = formatted(sources)
    changed = [k for k in sources if new[k] != sources[k]]
    if a.check:
        for path, i in changed:
            print(f'{path.relative_to(ROOT)}: exported cell {i} is not formatted (run: python tools/format_nbs.py)')
        return 1 if changed else 0
    for path in sorted({path for path, _ in changed}):
        nb = nbs[path]
        for (p2, i) in changed:
            if p2 == path:
                nb['cells'][i]['source'] = new[(p2, i)].splitlines(keepends=True)
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    print(f'{len(changed)} exported cell(s) formatted in {len({p for p, _ in changed})} notebook(s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
