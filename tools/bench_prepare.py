#!/usr/bin/env python3
"""Measure `transformer_nb.data.prepare`: peak memory (RSS) and throughput against plain `Tokenizer.encode_batch`.

    python tools/bench_prepare.py                      # corpora of ~5 MB and ~50 MB (default)
    python tools/bench_prepare.py --sizes-mb 1 5 --repeats 1

For each size, a corpus is made in a temporary folder by repeating
Tiny Shakespeare (`sources.tiny_shakespeare`: fetched once into the corpus cache and checked). A byte-level BPE tokenizer
(`--vocab-size`, default 4096) is trained once on the benchmark text. Then, each in a fresh
subprocess so that peak memory is that of the job alone:

- `prepare`: `prepare(corpus, tokenizer_dir, cache)` into an empty cache (validation + tokenization +
  writing shards); reported: wall time, MB/s over the corpus bytes, the main process's peak RSS
  (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and the RSS right after the imports, and the largest peak RSS of
  its tokenizing worker processes (`RUSAGE_CHILDREN`: the largest single worker, not their sum; 0 when the corpus
  was small enough to be tokenized in the main process). `tnb bench`'s `prepare_memory` sums the whole tree.
- `encode_batch`: the same documents (`iter_documents`, read beforehand, not timed) encoded with
  plain `Tokenizer.encode_batch(batch, add_special_tokens=False)` in batches of the same size;
  only the encode calls are timed. This is the baseline: the tokenizer's own speed on this text.
  `prepare` itself calls `encode_batch_fast` (the same encoder without character offsets, which
  we don't need), so that is timed too, for reference.

The machine may be shared: runs of the two kinds alternate and the best of `--repeats` is kept.
"""
import argparse, json, math, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024   # KiB on Linux

def child_prepare(corpus, tok_dir, cache):
    from transformer_nb.data import prepare
    base = rss_mb()
    t = time.perf_counter()
    d = prepare(corpus, tok_dir, cache, show_progress=False, verbose=False)
    dt = time.perf_counter() - t
    st = d.manifest['stats']
    return {'seconds': dt, 'rss_mb': rss_mb(), 'rss_after_imports_mb': base, 'tokens': len(d.train) + len(d.val),
            'worker_rss_mb': rss_mb(resource.RUSAGE_CHILDREN), 'workers': st.get('workers', 1),
            'validate_seconds': st['validate_seconds'], 'tokenize_seconds': st['tokenize_seconds']}

def child_encode(corpus, tok_dir, batch_chars):
    from transformer_nb.data import iter_documents
    from transformer_nb.tokenizer import build_from_artifacts
    tok = build_from_artifacts(tok_dir)
    batches, b, n = [], [], 0
    for doc in iter_documents(corpus):
        b.append(doc); n += len(doc)
        if n >= batch_chars: batches.append(b); b, n = [], 0
    if b: batches.append(b)
    t = time.perf_counter()
    for b in batches: tok.encode_batch(b, add_special_tokens=False)
    t1 = time.perf_counter()
    for b in batches: tok.encode_batch_fast(b, add_special_tokens=False)
    return {'seconds': t1 - t, 'fast_seconds': time.perf_counter() - t1}

def run_child(*args) -> dict:
    r = subprocess.run([sys.executable, __file__, '--child', *map(str, args)], capture_output=True, text=True)
    if r.returncode: sys.exit(f'child {args[0]} failed:\n{r.stderr}')
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes-mb', type=float, nargs='+', default=[5, 50])
    ap.add_argument('--vocab-size', type=int, default=4096)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--batch-chars', type=int, default=1 << 20)
    ap.add_argument('--child', nargs='+', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        res = child_prepare(*rest) if kind == 'prepare' else child_encode(rest[0], rest[1], int(rest[2]))
        print(json.dumps(res)); return

    from transformer_nb.base import CpuShare, others_text
    from transformer_nb.tokenizer import train_bbpe
    from transformer_nb.sources import tiny_shakespeare
    share = CpuShare().start()      # the other processes' share of the CPUs while the runs below measure
    TINY = tiny_shakespeare()
    text = TINY.read_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_dir = tmp/'tokenizer'
        train_bbpe([TINY], tok_dir, vocab_size=a.vocab_size, show_progress=False)
        for size in a.sizes_mb:
            corpus = tmp/f'corpus_{size:g}mb.txt'
            reps = max(1, math.ceil(size * 1e6 / len(text)))
            with open(corpus, 'wb') as f:
                for _ in range(reps): f.write(text)
            mb = corpus.stat().st_size / 1e6
            best_p, best_e = None, None
            for i in range(a.repeats):
                cache = tmp/f'cache_{size:g}_{i}'
                p = run_child('prepare', corpus, tok_dir, cache)
                e = run_child('encode', corpus, tok_dir, a.batch_chars)
                if best_p is None or p['seconds'] < best_p['seconds']: best_p = p
                best_e = e if best_e is None else {k: min(best_e[k], e[k]) for k in e}
                print(f'  {mb:.1f} MB run {i}: prepare {p["seconds"]:.2f} s (rss {p["rss_mb"]:.0f} MB), '
                      f'encode_batch {e["seconds"]:.2f} s', flush=True)
            rows.append((mb, best_p, best_e))
    share.stop()

    print(f'prepare vs plain Tokenizer.encode_batch (vocab {a.vocab_size}, batches of {a.batch_chars:,} chars, '
          f'best of {a.repeats}, {os.cpu_count()} CPUs{others_text(share.others, "; ")})')
    head = ('corpus MB', 'tokens', 'prepare s', 'prepare MB/s', 'encode_batch MB/s', 'prepare/encode_batch',
            'encode_batch_fast MB/s', 'workers', 'main peak RSS MB', 'worker peak RSS MB', 'RSS after imports MB')
    body = [(f'{mb:.1f}', f'{p["tokens"]:,}', f'{p["seconds"]:.2f}', f'{mb / p["seconds"]:.2f}', f'{mb / e["seconds"]:.2f}',
             f'{e["seconds"] / p["seconds"]:.2f}x', f'{mb / e["fast_seconds"]:.2f}', f'{p["workers"]}',
             f'{p["rss_mb"]:.0f}', f'{p["worker_rss_mb"]:.0f}', f'{p["rss_after_imports_mb"]:.0f}')
            for mb, p, e in rows]
    w = [max(len(r[i]) for r in body + [head]) for i in range(len(head))]
    for r in [head] + body: print('  '.join(c.rjust(w[i]) for i, c in enumerate(r)))
    if len(rows) > 1:
        peak = lambda p: max(p['rss_mb'], p['worker_rss_mb'])      # the largest single process
        first, last = rows[0], rows[-1]
        print(f'largest single process, {last[0]:.1f} MB corpus / {first[0]:.1f} MB corpus: '
              f'{peak(last[1]):.0f} / {peak(first[1]):.0f} MB = {peak(last[1]) / peak(first[1]):.2f}x')

if __name__ == '__main__':
    main()
