"""The recipe's ablation on the tuning split: each variant of configs/shakespeare_cpu.yaml over several seeds, at a
fixed number of training tokens (the same figure again for a seed), trained on the training part of the corpus less
the tuning split and scored on the tuning split (never on the held-out part that reports the final figures).

    python tools/recipe_ablation.py --jobs 2 --out bench/recipe-tuning.json

Each (variant, seed) runs in its own process on one thread (`--jobs` at a time); its result is kept in --cache under
a name made from the variant's overrides, the base config's text, the corpus, the split, the token budget and the
seed, so an interrupted run resumes and a changed variant or base config is measured again (after a change to the
code, delete the cache). The summary gives, per variant, the mean and standard deviation of bits per byte and the
difference to the first row with its standard error; nbs/13_recipe.ipynb reads it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / 'configs' / 'shakespeare_cpu.yaml'
# the reference row: the recipe before this ablation, as overrides of the base config. configs/shakespeare_cpu_recipe.yaml
# is this plus what the ablation adopted (model.zero_init_output=true); nbs/13_recipe.ipynb checks that they agree
RECIPE = ['optimizer.algorithm=muon', 'model.qk_norm=true', 'model.activation=relu2',
          'optimizer.muon_learning_rate=0.01', 'optimizer.learning_rate=6e-3', 'optimizer.muon_ns_steps=3',
          'model.tie_embeddings=false', 'model.num_attention_heads=2', 'model.num_key_value_heads=2']
# the first is the reference of the differences
VARIANTS = {
    'recipe': RECIPE,
    'baseline (shakespeare_cpu.yaml)': [],
    'recipe, AdamW instead of Muon': RECIPE + ['optimizer.algorithm=adam_w', 'optimizer.learning_rate=3e-3'],
    'recipe without QK-norm': RECIPE + ['model.qk_norm=false'],
    'recipe with GELU instead of ReLU^2': RECIPE + ['model.activation=gelu'],
    'recipe with a tied head': RECIPE + ['model.tie_embeddings=true'],
    'recipe with 4 heads of 32': RECIPE + ['model.num_attention_heads=4', 'model.num_key_value_heads=4'],
    'recipe, 5 Newton-Schulz steps': RECIPE + ['optimizer.muon_ns_steps=5'],
    'recipe, Muon lr 0.02': RECIPE + ['optimizer.muon_learning_rate=0.02'],
    'recipe, Muon lr 0.005': RECIPE + ['optimizer.muon_learning_rate=0.005'],
    'recipe + zero-init outputs': RECIPE + ['model.zero_init_output=true'],
    'recipe + logit soft-cap 15': RECIPE + ['model.logit_softcap=15'],
}
ONE = """
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from transformer_nb.config import load_config
from transformer_nb.quality import quality_run
out, corpus, tokens, seed, over = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
res = quality_run(load_config({base!r}, over), corpus, tokens=tokens, seed=seed, tune=True, show_progress=False)
Path(out + '.part').write_text(json.dumps(res | {{'overrides': over}}))
Path(out + '.part').replace(out)          # whole or not at all: a killed run leaves no result that looks finished
"""


def key(over: list[str], corpus: str, tokens: int, seed: int) -> str:
    made = [sorted(over), BASE.read_text(encoding='utf-8'), corpus, 'tuning', tokens, seed]
    return hashlib.sha256(json.dumps(made).encode()).hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--corpus', default='wikipedia-vital')
    ap.add_argument('--tokens', type=int, default=1 << 20, help='training tokens per run (default 1,048,576)')
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--jobs', type=int, default=2, help='runs at a time, one thread each (default 2)')
    ap.add_argument('--only', nargs='*', default=None, help='variant names to run (default: all)')
    ap.add_argument('--cache', type=Path, default=REPO / 'runs' / 'recipe-tuning')
    ap.add_argument('--out', type=Path, default=REPO / 'bench' / 'recipe-tuning.json')
    a = ap.parse_args()
    from transformer_nb.base import utc_now_iso
    from transformer_nb.quality import difference, summarize_runs
    a.cache.mkdir(parents=True, exist_ok=True)
    if unknown := [n for n in a.only or [] if n not in VARIANTS]:
        sys.exit(f"--only: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    variants = {n: v for n, v in VARIANTS.items() if a.only is None or n in a.only or n == 'recipe'}   # (the reference)
    jobs = [(n, s, a.cache / f'{key(v, a.corpus, a.tokens, s)}.json') for s in range(1, a.seeds + 1)
            for n, v in variants.items()]
    todo, running, t0 = [j for j in jobs if not j[2].exists()], [], time.time()
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs cached in {a.cache}; running {len(todo)}", flush=True)
    script = ONE.format(base=str(BASE))
    while todo or running:
        while todo and len(running) < a.jobs:
            n, s, out = todo.pop(0)
            cmd = [sys.executable, '-c', script, str(out), a.corpus, str(a.tokens), str(s), *variants[n]]
            running.append((n, s, subprocess.Popen(cmd, stdout=subprocess.DEVNULL)))
        time.sleep(1)
        for r in [r for r in running if r[2].poll() is not None]:
            running.remove(r)
            if r[2].returncode:
                for other in running: other[2].kill()
                sys.exit(f"{r[0]}, seed {r[1]}: failed (exit {r[2].returncode})")
            print(f"{time.time() - t0:6.0f} s  done: {r[0]}, seed {r[1]}", flush=True)
    entries = [summarize_runs(n, [json.loads(out.read_text()) for nn, _, out in jobs if nn == n]) for n in variants]
    for e in entries[1:]: e['difference_bpb'], e['se_bpb'] = difference(entries[0], e)
    for e in entries:
        for r in e['runs']: r['detail'].pop('config', None)   # (the overrides say it)
        e['overrides'] = variants[e['config']]
    one = entries[0]['runs'][0]['detail']
    res = {'schema': 'transformer_nb.recipe-tuning/1', 'created_at': utc_now_iso(), 'corpus': one['corpus'],
           'split': one['split'], 'heldout': one['heldout'], 'budget': one['budget'], 'threads': 1,
           'seeds': list(range(1, a.seeds + 1)), 'base_config': 'configs/shakespeare_cpu.yaml', 'configs': entries}
    a.out.write_text(json.dumps(res, indent=1) + '\n')
    for e in entries:
        d = f"{e['difference_bpb']:+.4f} +- {e['se_bpb']:.4f}" if 'difference_bpb' in e and e['se_bpb'] else ''
        print(f"{e['config']:36} {e['mean_bpb']:.4f} (sd {e['sd_bpb'] or 0:.4f})  {d}")
    print(f"written to {a.out}")


if __name__ == '__main__':
    main()
