"""Fail when the notebooks are not clean or the library is not exported from them.

Runs `nbdev-clean` and `nbdev-export` and compares every notebook and library file before and
after: any file they change, add or remove means the committed tree was out of sync. The files
are left as the tools wrote them, so `git diff` shows what to commit.
"""
import hashlib, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def snapshot():
    files = list((ROOT / 'nbs').rglob('*.ipynb')) + list((ROOT / 'transformer_nb').rglob('*.py'))
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if '.ipynb_checkpoints' not in p.parts and '__pycache__' not in p.parts}

def main():
    before = snapshot()
    for tool in ('nbdev-clean', 'nbdev-export'):
        subprocess.run([str(BIN / tool)], cwd=ROOT, check=True)
    after = snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print('out of sync: nbdev-clean / nbdev-export changed these files (review and commit them):')
        for k in changed: print(f'  {k}')
        sys.exit(1)
    print(f'notebooks clean and library in sync ({len(after)} files checked)')

if __name__ == '__main__':
    main()
