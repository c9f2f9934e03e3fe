"""Training speed at nanoGPT's CPU "baby GPT" shape: our training step against nanoGPT's own train.py.

    python tools/bench_nanogpt.py --nanogpt /work/ext/nanoGPT --rounds 3 --threads 2

nanoGPT is NOT part of this repository: clone it anywhere (git clone https://github.com/karpathy/nanoGPT)
and prepare its character-level Shakespeare data once (`python data/shakespeare_char/prepare.py`, with
`data/shakespeare_char/input.txt` in place). This script only shells out to it.

Shape (nanoGPT README, "I only have a macbook"): 4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0,
vocabulary 65, fp32, eager (`--compile=False`). nanoGPT's side runs `train.py` with those settings (evaluation
only at iteration 0, one batch) and its per-iteration `time ...ms` lines are read; ours runs the one optimizer
step of the library (`step.train_step` on a `bench.step_bench`, as `bench.train_throughput` does) on the same
shape (`baby`: RMSNorm, RoPE, GELU MLP, tied head, fused AdamW, clipping at 1.0). Each round runs both, one after the other, in fresh processes
with the same thread count; the figure of each side is the median over rounds of (tokens per step / mean step
time over `--steps` steps after `--warmup`). `--clock process` times steps by each process's CPU clock instead
of the wall clock (for one thread on a crowded machine, where wall times mostly measure the other processes).
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
import json, time, torch
from transformer_nb.bench import bench_config, bench_shape, random_tokens, step_bench
from transformer_nb.step import train_step
clock = time.{clock}
s = bench_shape('baby')
cfg = bench_config(s)
b = step_bench(cfg, s.vocab_size, random_tokens(s.vocab_size))
step = lambda: train_step(b.step_model, b.optimizer, b.batches, cfg.optimizer.learning_rate, b.setup, b.scaler)
for _ in range({warmup}): out = step()
float(out[0]); t0 = clock()
for _ in range({steps}): out = step()
float(out[0]); step_ms = (clock() - t0) / {steps} * 1e3
print('RESULT ' + json.dumps({{'tokens_per_s': s.tokens_per_step / step_ms * 1e3, 'step_ms': step_ms,
                              'threads': torch.get_num_threads()}}))
"""
# nanoGPT times its iterations with time.time(); with --clock process the wrapper points that at the process's
# CPU clock (nanoGPT's code is run unchanged, by runpy)
NANOGPT_WRAPPER = """
import runpy, sys, time
if {process}: time.time = time.process_time
sys.argv = ['train.py'] + {args!r}
runpy.run_path('train.py', run_name='__main__')
"""


def run_nanogpt(repo: Path, steps: int, warmup: int, env: dict, clock: str = 'wall') -> dict:
    with tempfile.TemporaryDirectory(prefix='nanogpt-out-') as out:
        args = [*NANOGPT_ARGS, f'--max_iters={warmup + steps}', f'--out_dir={out}']
        cmd = [sys.executable, '-c', NANOGPT_WRAPPER.format(process=clock == 'process', args=args)]
        p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    if p.returncode != 0: sys.exit(f"nanoGPT train.py failed:\n{p.stderr[-3000:]}")
    ms = {int(m[1]): float(m[2]) for m in re.finditer(r'iter (\d+): loss [\d.]+, time ([\d.]+)ms', p.stdout)}
    timed = [ms[i] for i in range(warmup, warmup + steps) if i in ms]
    if len(timed) < steps: sys.exit(f"nanoGPT printed {len(timed)} of {steps} iteration times:\n{p.stdout[-2000:]}")
    step_ms = statistics.mean(timed)
    return {'tokens_per_s': TOKENS_PER_STEP / step_ms * 1e3, 'step_ms': step_ms}


def run_ours(steps: int, warmup: int, env: dict, clock: str = 'wall') -> dict:
    code = OURS.format(steps=steps, warmup=warmup, clock='process_time' if clock == 'process' else 'perf_counter')
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
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
    ap.add_argument('--clock', default='wall', choices=('wall', 'process'), help="step times by the wall clock "
                    "(default), or by each process's CPU clock (steadier on a crowded machine; use with --threads 1)")
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
            res = (run_nanogpt(repo, a.steps, a.warmup, env, a.clock) if name == 'nanogpt'
                   else run_ours(a.steps, a.warmup, env, a.clock))
            rows[name].append(res)
            print(f"round {r + 1} {name:8s} {res['tokens_per_s']:9,.0f} tokens/s  {res['step_ms']:7.2f} ms/step  "
                  f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    med = {k: statistics.median(x['tokens_per_s'] for x in v) for k, v in rows.items()}
    print(f"median tokens/s: ours {med['ours']:,.0f}, nanoGPT {med['nanogpt']:,.0f}: ours / nanoGPT = "
          f"{med['ours'] / med['nanogpt']:.2f}x; per round: "
          + ', '.join(f"{o['tokens_per_s'] / n['tokens_per_s']:.2f}x" for o, n in zip(rows['ours'], rows['nanogpt'])))
    if a.json:
        Path(a.json).write_text(json.dumps({'rounds': rows, 'median': med, 'ratio': med['ours'] / med['nanogpt'],
                                            'threads': a.threads, 'clock': a.clock, 'steps': a.steps, 'warmup': a.warmup,
                                            'load_average': os.getloadavg()}, indent=1) + '\n')


if __name__ == '__main__':
    main()
