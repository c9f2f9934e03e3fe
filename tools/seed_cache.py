"""Put Tiny Shakespeare into the corpus cache from a local copy, for tests and CI on a machine without access to its
canonical address (GitHub). The copy is checked against the same SHA-256 as a download; a wrong file is refused.

    python tools/seed_cache.py                      # ../shared/data/tinyshakespeare.txt beside the repository, if any
    python tools/seed_cache.py --from PATH          # any copy of input.txt

Without a local copy it does nothing: the first use downloads the file instead.
"""
import argparse
import shutil
import sys
from pathlib import Path

from transformer_nb.sources import CorpusError, tiny_shakespeare

DEFAULT = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tinyshakespeare.txt'

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--from', dest='src', type=Path, default=None, help=f'a copy of input.txt (default: {DEFAULT})')
    a = ap.parse_args()
    src = a.src or DEFAULT
    if not src.is_file():
        if a.src: sys.exit(f"{src}: no such file")
        print(f"seed_cache: no local copy at {src}; Tiny Shakespeare will be downloaded when first used")
        sys.exit(0)
    try: path = tiny_shakespeare(fetch=lambda d: shutil.copyfile(src, d / 'input.txt'))
    except CorpusError as e: sys.exit(f"seed_cache: {src}: {e}")
    print(f"seed_cache: Tiny Shakespeare cached at {path}")
