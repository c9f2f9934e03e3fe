"""nanoGPT's CPU "baby GPT" against ours: training speed at the same shape, or (--quality) held-out bits per byte after
the same CPU budget on the same benchmark corpus.

    python tools/bench_nanogpt.py --nanogpt /work/ext/nanoGPT --rounds 3 --threads 2
    python tools/bench_nanogpt.py --nanogpt /work/ext/nanoGPT --quality --corpus wikipedia-vital --tune --lrs 1e-3,2e-3,4e-3 --seeds 1
    python tools/bench_nanogpt.py --nanogpt /work/ext/nanoGPT --quality --corpus wikipedia-vital --lrs 2e-3 --seeds 3

--quality: nanoGPT's own train.py, unchanged, with its README's CPU settings (character level, 4 layers, 4 heads,
128 wide, block 64, batch 12, dropout 0, eager; learning rate 1e-3 with warm-up 100 and cosine decay to 1e-4 unless
--lrs says otherwise), on one thread, trained on the training part of the corpus of `tnb bench --quality` (the
character vocabulary of the whole corpus, as its shakespeare_char preparation does). Its iteration count is set
so that the iterations fill --budget CPU-seconds (from the time per iteration of a short first run, and run once
more, rescaled, when the iterations took more than 2% more or less than the budget; the schedule ends with the run,
as its README sets lr_decay_iters = max_iters); the CPU-seconds actually spent are reported.
The checkpoint is then scored on the held-out text (or, with --tune, the tuning split) exactly as
`tnb bench --quality` scores ours: consecutive windows of the block size, every character but the first predicted
once; nats per character and bits per UTF-8 byte of that text.

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
import math
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
    line = next((x for x in p.stdout.splitlines() if x.startswith('RESULT ')), None)
    if p.returncode != 0 or line is None: sys.exit(f"our step failed:\n{p.stderr[-3000:]}")
    return json.loads(line[len('RESULT '):])


QUALITY_ARGS = ['config/train_shakespeare_char.py', '--device=cpu', '--compile=False', '--eval_iters=1',
                '--log_interval=1', '--block_size=64', '--batch_size=12', '--n_layer=4', '--n_head=4', '--n_embd=128',
                '--dropout=0.0', '--always_save_checkpoint=True', '--dataset=tnb']
# nanoGPT seeds with torch.manual_seed(1337 + rank): the wrapper adds the run's seed
SEEDED_WRAPPER = """
import runpy, sys, time, torch
torch.set_num_threads(1)
time.time = time.process_time
_seed = torch.manual_seed
torch.manual_seed = lambda s: _seed(s + {seed})
sys.argv = ['train.py'] + {args!r}
runpy.run_path('train.py', run_name='__main__')
"""
SCORE = """
import json, sys, numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
from model import GPT, GPTConfig
from transformer_nb.metrics import window_batches
ck = torch.load({ckpt!r}, map_location='cpu', weights_only=False)
m = GPT(GPTConfig(**ck['model_args']))
m.load_state_dict({{k.removeprefix('_orig_mod.'): v for k, v in ck['model'].items()}})
m.eval()
ids = np.fromfile({val!r}, dtype=np.uint16)
nats, n = 0.0, 0
with torch.no_grad():
    for x, y in window_batches(ids, {block}, 64):
        logits, loss = m(x, y)
        nats += float(loss) * y.numel(); n += y.numel()
print('RESULT ' + json.dumps({{'nats': nats, 'predicted': n, 'tokens': len(ids), 'iter_num': ck['iter_num']}}))
"""


def nanogpt_data(texts, folder: Path):
    "nanoGPT's data/tnb: train.bin and val.bin (uint16 character ids) and meta.pkl, as its shakespeare_char prepares."
    import pickle
    import numpy as np
    chars = sorted(set(texts.train) | set(texts.heldout))
    stoi = {c: i for i, c in enumerate(chars)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (('train', texts.train), ('val', texts.heldout)):
        np.array([stoi[c] for c in text], dtype=np.uint16).tofile(folder / f'{name}.bin')
    with open(folder / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': stoi}, f)
    return len(chars)


def nanogpt_train(work: Path, iters: int, lr: float, seed: int) -> tuple[list[float], str]:
    "nanoGPT's train.py for `iters` iterations in `work`: (iteration CPU times in seconds, its stdout)."
    args = [*QUALITY_ARGS, f'--max_iters={iters}', f'--lr_decay_iters={iters}', f'--eval_interval={iters}',
            f'--learning_rate={lr}', f'--min_lr={lr / 10}', f'--out_dir={work / "out"}']
    p = subprocess.run([sys.executable, '-c', SEEDED_WRAPPER.format(seed=seed, args=args)], cwd=work,
                       capture_output=True, text=True)
    if p.returncode != 0: sys.exit(f"nanoGPT train.py failed:\n{p.stderr[-3000:]}")
    ms = {int(m[1]): float(m[2]) for m in re.finditer(r'iter (\d+): loss [\d.]+, time ([\d.]+)ms', p.stdout)}
    # iteration 0's time holds the first evaluation: it is left out
    return [ms[i] / 1e3 for i in sorted(ms) if i > 0], p.stdout


def nanogpt_quality(repo: Path, texts, budget: float, lr: float, seed: int) -> dict:
    "One nanoGPT run for `budget` CPU-seconds of iterations, scored on `texts.heldout`: figures as `tnb bench --quality`."
    import shutil
    with tempfile.TemporaryDirectory(prefix='nanogpt-q-') as d:
        work = Path(d)
        for f in ('train.py', 'model.py', 'configurator.py'): shutil.copy(repo / f, work / f)
        shutil.copytree(repo / 'config', work / 'config')
        vocab = nanogpt_data(texts, work / 'data' / 'tnb')
        probe, _ = nanogpt_train(work, 60, lr, seed)
        iters = max(1, int(budget / statistics.mean(probe[10:])))
        times, _ = nanogpt_train(work, iters, lr, seed)
        if not 0.98 <= sum(times) / budget <= 1.02:        # the first run's pace was off: once more, rescaled
            iters = max(1, int(iters * budget / sum(times)))
            times, _ = nanogpt_train(work, iters, lr, seed)
        code = SCORE.format(repo=str(work), ckpt=str(work / 'out' / 'ckpt.pt'), val=str(work / 'data' / 'tnb' / 'val.bin'),
                            block=64)
        p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None: sys.exit(f"scoring failed:\n{p.stderr[-3000:]}")
    s = json.loads(line[len('RESULT '):])
    # per character and per UTF-8 byte of the text the predicted ids stand for, as every figure of transformer_nb
    # (metrics.text_figures, where an end-of-document token stands for the newline of the blank line it replaces):
    # one id per character, and every character but the first is predicted
    predicted = texts.heldout[1:]
    if s['predicted'] != len(predicted): sys.exit(f"scoring predicted {s['predicted']} characters of {len(predicted)}")
    npc, bpb = s['nats'] / len(predicted), s['nats'] / math.log(2) / len(predicted.encode('utf-8'))
    return {'seed': seed, 'learning_rate': lr, 'steps': iters, 'tokens': iters * TOKENS_PER_STEP,
            'train_cpu_s': sum(times[:iters]), 'vocab_size': vocab, 'nats_per_char': npc,
            'bpb': bpb, 'epochs': iters * TOKENS_PER_STEP / len(texts.train),
            'load_average': os.getloadavg()}


def quality_main(a, repo: Path):
    from transformer_nb.quality import bench_texts
    texts = bench_texts(a.corpus, a.tune)
    print(f"nanoGPT on {texts.description} ({texts.split}); {a.budget:.0f} CPU-seconds on one thread", flush=True)
    from transformer_nb.bench import machine_info
    out = {'corpus': texts.corpus, 'split': texts.split, 'heldout': texts.description, 'budget_cpu_s': a.budget,
           'threads': 1, 'machine': machine_info(), 'configs': []}
    for lr in [float(x) for x in a.lrs.split(',')]:
        runs = []
        for seed in range(1, a.seeds + 1):
            r = nanogpt_quality(repo, texts, a.budget, lr, seed)
            runs.append(r)
            print(f"lr {lr:g} seed {seed}: {r['steps']} iterations ({r['train_cpu_s']:.0f} CPU-s, {r['epochs']:.2f} "
                  f"epochs): {r['bpb']:.4f} bits/byte, {r['nats_per_char']:.4f} nats/char", flush=True)
        b = [r['bpb'] for r in runs]
        out['configs'].append({'config': f'nanoGPT baby, lr {lr:g}', 'runs': runs, 'mean_bpb': statistics.fmean(b),
                               'sd_bpb': statistics.stdev(b) if len(b) > 1 else None,
                               'mean_nats_per_char': statistics.fmean(r['nats_per_char'] for r in runs)})
    for e in out['configs']:
        sd = f" (sd {e['sd_bpb']:.4f})" if e['sd_bpb'] is not None else ''
        print(f"{e['config']}: {e['mean_bpb']:.4f} bits/byte{sd} over {len(e['runs'])} seed(s)")
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1) + '\n')


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
    ap.add_argument('--quality', action='store_true', help='held-out bits per byte after --budget CPU-seconds')
    ap.add_argument('--corpus', default='wikipedia-vital', help="--quality: 'wikipedia-vital' (default), "
                    "'tinyshakespeare' or a text file")
    ap.add_argument('--tune', action='store_true', help='--quality: train without the tuning split, score on it')
    ap.add_argument('--budget', type=float, default=80.0, help='--quality: CPU-seconds of training (default 80, as tnb bench --quality)')
    ap.add_argument('--lrs', default='1e-3', help='--quality: learning rates, comma separated (default 1e-3)')
    ap.add_argument('--seeds', type=int, default=3, help='--quality: seeds per learning rate (default 3)')
    a = ap.parse_args(argv)
    repo = Path(a.nanogpt)
    if not (repo / 'train.py').is_file(): sys.exit(f"{repo}: no nanoGPT train.py there")
    if a.quality: return quality_main(a, repo)
    if not (repo / 'data' / 'shakespeare_char' / 'train.bin').is_file():
        sys.exit(f"{repo}/data/shakespeare_char/train.bin missing: run its prepare.py first")
    env = {**os.environ}
    if a.threads: env['OMP_NUM_THREADS'] = str(a.threads)
    from transformer_nb.base import CpuShare, others_text
    from transformer_nb.bench import machine_info
    rows, cpu = {'nanogpt': [], 'ours': []}, CpuShare().start()
    for r in range(a.rounds):
        for name in (('nanogpt', 'ours') if r % 2 == 0 else ('ours', 'nanogpt')):     # alternate who goes first
            t0 = time.time()
            res = (run_nanogpt(repo, a.steps, a.warmup, env, a.clock) if name == 'nanogpt'
                   else run_ours(a.steps, a.warmup, env, a.clock))
            rows[name].append(res)
            print(f"round {r + 1} {name:8s} {res['tokens_per_s']:9,.0f} tokens/s  {res['step_ms']:7.2f} ms/step  "
                  f"({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    med, others = {k: statistics.median(x['tokens_per_s'] for x in v) for k, v in rows.items()}, cpu.stop().others
    print(f"median tokens/s: ours {med['ours']:,.0f}, nanoGPT {med['nanogpt']:,.0f}: ours / nanoGPT = "
          f"{med['ours'] / med['nanogpt']:.2f}x; per round: "
          + ', '.join(f"{o['tokens_per_s'] / n['tokens_per_s']:.2f}x" for o, n in zip(rows['ours'], rows['nanogpt']))
          + others_text(others, '; '))
    if a.json:
        Path(a.json).write_text(json.dumps({'rounds': rows, 'median': med, 'ratio': med['ours'] / med['nanogpt'],
                                            'threads': a.threads, 'clock': a.clock, 'steps': a.steps, 'warmup': a.warmup,
                                            'load_average': os.getloadavg(), 'others_cpu_share': others,
                                            'machine': {**machine_info(), 'threads': a.threads}}, indent=1) + '\n')


if __name__ == '__main__':
    main()
