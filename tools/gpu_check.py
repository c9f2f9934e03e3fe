"""The CUDA check, with the Python at hand: the CUDA tests, bf16 MFU at two shapes, compiled-decode speed; one summary.

    python3 tools/gpu_check.py [--out tnb-gpu-check.json] [--steps 10] [--repeats 3]
    make gpu-check PYTHON=python3            # the same

Runs with whatever interpreter starts it, without a virtual environment and without the network, so that it works
on a GPU machine whose own CUDA build of torch is already installed:

1. `tests/test_cuda.py` with pytest (each test passed, failed or skipped; 2-GPU tests skip on one GPU);
2. `python -m transformer_nb bench --device cuda --precision bf16 --shapes m3_medium,gpt2_124m --only
   peak,train,generate --no-compile --gen-modes kv_cache,compiled --gen-batches 1`: training tokens/s and model
   FLOP/s in bf16, turned into MFU against the GPU's datasheet peak (dense bf16,
   `transformer_nb.device.datasheet_peak`), and
   greedy decoding tokens/s with the KV cache, eager and compiled (a static cache, `torch.compile`d step);
3. one summary table of all that, also written as JSON to `--out`.

The project's folder is put on the path of every step, so the package need not be installed; its dependencies must
be importable (a missing one is named with what to do, before anything runs).

Exit status: 0 every step ran and no test failed; 1 a test failed or a step could not run; 3 no CUDA GPU is
visible to torch (nothing was run: a CPU machine, or a CPU-only torch).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = 3
SHAPES = ('m3_medium', 'gpt2_124m')
# import name -> distribution: what the CUDA checks import (the runtime dependencies they load; zstandard, matplotlib
# and tensorboard are imported only where used) and pytest
NEEDED = {'torch': 'torch', 'tokenizers': 'tokenizers', 'safetensors': 'safetensors', 'numpy': 'numpy',
          'yaml': 'pyyaml', 'tqdm': 'tqdm', 'pyarrow': 'pyarrow', 'filelock': 'filelock', 'pytest': 'pytest'}


def missing_packages() -> list[str]:
    "The distributions the checks need that this interpreter cannot import."
    return [dist for mod, dist in NEEDED.items() if importlib.util.find_spec(mod) is None]


def child_env() -> dict:
    "The environment of the steps: this project first on the path, so that an installed copy does not win."
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env.setdefault('PYTHONUNBUFFERED', '1')
    return env


def run_step(cmd: list[str], timeout: float, log) -> tuple[int | str, float]:
    "Run one step, its output going to `log`; (exit status or 'timeout', seconds)."
    t0 = time.perf_counter()
    print('$', ' '.join(cmd), flush=True)
    try: rc = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                             timeout=timeout).returncode
    except subprocess.TimeoutExpired: rc = 'timeout'
    return rc, time.perf_counter() - t0


def cuda_tests(tmp: Path, timeout: float, log) -> tuple[list[tuple[str, str, str]], int | str]:
    "Run tests/test_cuda.py; ([(test, 'pass'|'fail'|'skip', reason)], exit status)."
    xml = tmp / 'cuda-tests.xml'
    rc, _ = run_step([sys.executable, '-m', 'pytest', '-q', '-rA', '-p', 'no:cacheprovider', f'--junitxml={xml}',
                      'tests/test_cuda.py'], timeout, log)
    rows = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter('testcase'):
            outcome, why = 'pass', ''
            for tag, name in (('failure', 'fail'), ('error', 'fail'), ('skipped', 'skip')):
                if (el := case.find(tag)) is not None:
                    outcome, why = name, (el.get('message') or '').splitlines()[0][:80] if el.get('message') else ''
                    break
            rows.append((case.get('name'), outcome, why))
    return rows, rc


def bench(tmp: Path, steps: int, repeats: int, timeout: float, log) -> tuple[dict | None, int | str]:
    "Run `tnb bench` for bf16 training at SHAPES and eager/compiled decoding; (its JSON, exit status)."
    out = tmp / 'bench.json'
    rc, _ = run_step([sys.executable, '-m', 'transformer_nb', 'bench', '--device', 'cuda', '--precision', 'bf16',
                      '--shapes', ','.join(SHAPES), '--only', 'peak,train,generate', '--no-compile',
                      '--gen-modes', 'kv_cache,compiled', '--gen-batches', '1', '--steps', str(steps),
                      '--repeats', str(repeats), '--out', str(out), '--quiet'], timeout, log)
    return (json.loads(out.read_text()) if out.exists() else None), rc


def summarize(gpu: str, tests, tests_rc, res, bench_rc) -> tuple[list[str], dict, bool]:
    "The summary lines, the same as a dict, and whether everything ran and passed."
    from transformer_nb.device import datasheet_peak
    peak = datasheet_peak(gpu, 'bf16')
    lines, ok = [], True
    counts = {k: sum(o == k for _, o, _ in tests) for k in ('pass', 'fail', 'skip')}
    lines.append(f"CUDA tests (tests/test_cuda.py): {counts['pass']} passed, {counts['fail']} failed, "
                 f"{counts['skip']} skipped")
    width = max([len(n) for n, _, _ in tests] + [4])
    lines += [f"  {n:<{width}}  {o}" + (f"  ({why})" if why else '') for n, o, why in tests]
    if counts['fail'] or not tests or tests_rc not in (0, 5):
        ok = False
        if not tests: lines.append(f"  no test results (pytest exit status {tests_rc}; see the log)")
    train = {r['shape']: r for r in (res or {}).get('train', []) if r.get('mode') == 'eager'}
    gen = {r['mode']: r for r in (res or {}).get('generate', {}).get('rows', []) if r.get('batch') == 1}
    lines.append('bf16 training, MFU against the datasheet peak'
                 + (f" ({peak / 1e12:,.0f} TFLOP/s dense bf16 for {gpu})" if peak else f" (none known for {gpu})"))
    lines.append(f"  {'shape':<10}  {'tokens/s':>10}  {'model TFLOP/s':>13}  {'MFU':>6}")
    mfu = {}
    for s in SHAPES:
        r = train.get(s)
        if r is None:
            ok = False
            lines.append(f"  {s:<10}  not measured (tnb bench exit status {bench_rc}; see the log)")
            continue
        tps, fl = r['tokens_per_s']['median'], r['model_flops_per_s']['median']
        mfu[s] = fl / peak if peak else None
        lines.append(f"  {s:<10}  {tps:>10,.0f}  {fl / 1e12:>13,.1f}  "
                     + (f"{mfu[s]:>6.1%}" if peak else f"{'-':>6}"))
    if 'compiled' in gen:
        c = gen['compiled']['tokens_per_s']['median']
        e = gen.get('kv_cache', {}).get('tokens_per_s', {}).get('median')
        shape = (res or {}).get('generate', {}).get('shape', 'm3_medium')
        lines.append(f"compiled decode ({shape}, batch 1, greedy): {c:,.0f} tokens/s"
                     + (f" (eager with the KV cache: {e:,.0f} tokens/s, {c / e:.2f}x)" if e else ''))
    else:
        ok = False; lines.append(f"compiled decode: not measured (tnb bench exit status {bench_rc}; see the log)")
    data = {'gpu': gpu, 'datasheet_bf16_peak': peak,
            'tests': [{'test': n, 'outcome': o, 'reason': w} for n, o, w in tests],
            'train': {s: {'tokens_per_s': train[s]['tokens_per_s']['median'],
                          'model_flops_per_s': train[s]['model_flops_per_s']['median'], 'mfu_datasheet': mfu.get(s)}
                      for s in train},
            'decode_tokens_per_s': {m: gen[m]['tokens_per_s']['median'] for m in gen}, 'ok': ok}
    return lines, data, ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default='tnb-gpu-check.json', help='summary JSON (default: tnb-gpu-check.json)')
    ap.add_argument('--log', default=None, help='the steps\' full output (default: a file beside --out)')
    ap.add_argument('--steps', type=int, default=10, help='timed optimizer steps per repeat (default 10)')
    ap.add_argument('--repeats', type=int, default=3, help='timings per figure (default 3)')
    ap.add_argument('--timeout', type=float, default=600, help='seconds each step may take (default 600)')
    args = ap.parse_args(argv)
    if missing := missing_packages():
        print(f"gpu-check: {sys.executable} cannot import {', '.join(missing)}: install them beside its torch "
              "(see the Makefile's gpu-check comment), then run again", file=sys.stderr)
        return 1
    import torch
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU is visible to torch {torch.__version__} "
              f"(CUDA build: {torch.version.cuda or 'none'}) in {sys.executable}; nothing was run "
              f"(exit status {NO_GPU})")
        return NO_GPU
    gpu = torch.cuda.get_device_name(0)
    print(f"gpu-check on {gpu} x{torch.cuda.device_count()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{sys.executable}", flush=True)
    log_path = Path(args.log or Path(args.out).with_suffix('.log'))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d, open(log_path, 'w') as log:
        tests, tests_rc = cuda_tests(Path(d), args.timeout, log)
        res, bench_rc = bench(Path(d), args.steps, args.repeats, args.timeout, log)
    sys.path.insert(0, str(ROOT))
    lines, data, ok = summarize(gpu, tests, tests_rc, res, bench_rc)
    data['seconds'] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(data, indent=1))
    print('\n'.join(['', f'gpu-check summary ({gpu}, torch {torch.__version__})'] + lines))
    print(f"{'PASS' if ok else 'FAIL'} in {data['seconds']:.0f} s; summary in {args.out}, full output in {log_path}")
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
