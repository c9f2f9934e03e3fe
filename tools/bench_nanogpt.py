"""Training speed at nanoGPT's CPU "baby GPT" shape: our Trainer step against nanoGPT's own train.py (issue 15).

    python tools/bench_nanogpt.py --nanogpt /work/ext/nanoGPT --rounds 3 --threads 2

nanoGPT is NOT part of this repository: clone it anywhere (git clone https://github.com/karpathy/nanoGPT)
and prepare its character-level Shakespeare data once (`python data/shakespeare_char/prepare.py`, with
`data/shakespeare_char/input.txt` in place). This script only shells out to it.

Shape (nanoGPT README, "I only have a macbook"): 4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0,
vocabulary 65, fp32, eager (`--compile=False`). nanoGPT's side runs `train.py` with those settings (evaluation
only at iteration 0, one batch) and its per-iteration `time ...ms` lines are read; ours runs the Trainer's
optimizer step on the same shape (`transformer_nb.bench.train_throughput`, shape `baby`: RMSNorm, RoPE, GELU
MLP, tied head, fused AdamW, clipping at 1.0). Each round runs both, one after the other, in fresh processes
with the same thread count; the figure of each side is the median over rounds of (tokens per step / mean step
time over `--steps` steps after `--warmup`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKENS_PER_STEP = 12 * 64
NANOGPT_ARGS = ['config/train_shakespeare_char.py', '--device=cpu', '--compile=False', '--eval_iters=1',
                '--eval_interval=1000000', '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4',
                '--n_head=4', '--n_embd=128', '--lr_decay_iters=2000', '--dropout=0.0', '--always_save_checkpoint=False']
OURS = """
import json, sys, torch
from transformer_nb.bench import bench_shape, train_throughput
r = train_throughput(bench_shape('baby'), steps={steps}, repeats=1, warmup={warmup})
print('RESULT ' + json.dumps({{'tokens_per_s': r['tokens_per_s']['median'], 'step_ms': r['step_ms']['median'],
                              'threads': torch.get_num_threads()}}))
"""


def run_nanogpt(repo: Path, steps: int, warmup: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix='nanogpt-out-') as out:
        cmd = [sys.executable, 'train.py', *NANOGPT_ARGS, f'--max_iters={warmup + steps}', f'--out_dir={out}']
        p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    if p.returncode != 0: sys.exit(f"nanoGPT train.py failed:\n{p.stderr[-3000:]}")
    ms = {int(m[1]): float(m[2]) for m in re.finditer(r'iter (\d+): loss [\d.]+, time ([\d.]+)ms', p.stdout)}
    timed = [ms[i] for i in range(warmup, warmup + steps) if i in ms]
    if len(timed) < steps: sys.exit(f"nanoGPT printed {len(timed)} of {steps} iteration times:\n{p.stdout[-2000:]}")
    step_ms = statistics.mean(timed)
    return {'tokens_per_s': TOKENS_PER_STEP / step_ms * 1e3, 'step_ms': step_ms}


def run_ours(steps: int, warmup: int, env: dict) -> dict:
    p = subprocess.run([sys.executable, '-c', OURS.format(steps=steps, warmup=warmup)], capture_output=True, text=True, env=env)
    line = next((l for l in p.stdout.splitlines() if l.startswith('RESULT ')), None)
    if p.returncode != 0 or line is None: sys.exit(f"our step failed:\n{p.stderr[-3000:]}")
    return json.loads(line[len('RESULT '):])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--nanogpt', required=True, help='a nanoGPT clone with data/shakespeare_char prepared')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--steps', type=int, default=30, help='timed steps per run (default 30)')
    ap.add_argument('--warmup', type=int, default=5, help='untimed steps first (default 5)')
    ap.add_argument('--threads', type=int, default=None, help='OMP_NUM_THREADS for both sides (default: unset)')
    ap.add_argument('--json', default=None, help='write the results here')
    a = ap.parse_args(argv)
    repo = Path(a.nanogpt)
    if not (repo / 'train.py').is_file(): sys.exit(f"{repo}: no nanoGPT train.py there")
    if not (repo / 'data' / 'shakespeare_char' / 'train.bin').is_file():
        sys.exit(f"{repo}/data/shakespeare_char/train.bin missing: run its prepare.py first")
    env = {**os.environ}
    if a.threads: env['OMP_NUM_THREADS'] = str(a.threads)
    rows = {'nanogpt': [], 'ours': []}
    for r in range(a.rounds):
        for name in (('nanogpt', 'ours') if r % 2 == 0 else ('ours', 'nanogpt')):     # alternate who goes first
            t0 = time.time()
            res = run_nanogpt(repo, a.steps, a.warmup, env) if name == 'nanogpt' else run_ours(a.steps, a.warmup, env)
            rows[name].append(res)
            print(f"round {r + 1} {name:8s} {res['tokens_per_s']:9,.0f} tokens/s  {res['step_ms']:7.2f} ms/step  "
                  f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    med = {k: statistics.median(x['tokens_per_s'] for x in v) for k, v in rows.items()}
    print(f"median tokens/s: ours {med['ours']:,.0f}, nanoGPT {med['nanogpt']:,.0f}: ours / nanoGPT = "
          f"{med['ours'] / med['nanogpt']:.2f}x; per round: "
          + ', '.join(f"{o['tokens_per_s'] / n['tokens_per_s']:.2f}x" for o, n in zip(rows['ours'], rows['nanogpt'])))
    if a.json:
        Path(a.json).write_text(json.dumps({'rounds': rows, 'median': med, 'ratio': med['ours'] / med['nanogpt'],
                                            'threads': a.threads, 'steps': a.steps, 'warmup': a.warmup,
                                            'load_average': os.getloadavg()}, indent=1) + '\n')


if __name__ == '__main__':
    main()
