"""Run `make demo`'s pipeline and record what it printed and wrote in nbs/demo-run.json, the file the landing page
(nbs/index.ipynb) and the README show as "A real run".

    python tools/record_demo.py                      # runs/local-smoke, then nbs/demo-run.json
    python tools/record_demo.py --run-dir runs/x --out /tmp/demo-run.json

It removes DIR when it exists, runs `orchestrate --profile local --run-dir DIR` (the command `make demo` runs) in a
fresh process, and keeps: the command, the machine (CPU, cores, torch) and the share of the CPU time other processes used meanwhile,
the last lines it printed (its summary), the training and validation losses by step (from the run's
metrics.jsonl), and the first lines of samples.txt. tests/test_readme.py checks that the README quotes the same
summary and samples.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_LINES = 8          # of samples.txt after its two header lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--run-dir', type=Path, default=REPO / 'runs' / 'local-smoke')
    ap.add_argument('--out', type=Path, default=REPO / 'nbs' / 'demo-run.json')
    a = ap.parse_args(argv)
    from transformer_nb.base import CpuShare, utc_now_iso
    from transformer_nb.bench import machine_info
    run_dir = a.run_dir.resolve()
    rel = run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir     # (as `make demo` names it)
    cmd = ['orchestrate', '--profile', 'local', '--run-dir', str(rel), '--no-progress']
    if run_dir.exists():                  # from scratch, as a first `make demo`: tokenizer and shards included
        if not (run_dir / 'training.yaml').is_file():
            sys.exit(f"{rel}: exists and is not a run directory (no training.yaml): not removing it")
        print(f"removing the earlier run {rel}", flush=True)
        shutil.rmtree(run_dir)
    with CpuShare() as cpu:
        r = subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], capture_output=True, text=True,
                           cwd=REPO)
    if r.returncode:
        sys.exit(f"orchestrate failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    lines = r.stdout.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith('orchestrate: done'))
    rows = [json.loads(x) for x in (run_dir / 'metrics.jsonl').read_text().splitlines() if x.strip()]
    samples = (run_dir / 'samples.txt').read_text().splitlines()
    body = samples[2:]
    while body and not body[0].strip(): body.pop(0)          # (the blank line under the two header lines)
    record = {
        'schema': 'transformer_nb.demo-run/1', 'created_at': utc_now_iso(),
        'command': ' '.join(cmd[:5]), 'ran': ' '.join(cmd), 'machine': machine_info(), 'others_cpu_share': cpu.others,
        'summary': lines[start:],
        'train_loss': [[x['step'], x['loss']] for x in rows if x.get('kind') == 'train' and 'loss' in x],
        'eval_loss': [[x['step'], x['loss']] for x in rows if x.get('kind') == 'eval' and 'loss' in x],
        'samples_header': samples[:2], 'samples': body[:SAMPLE_LINES]}
    a.out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    print('\n'.join(record['summary']))
    print(f"recorded in {a.out}")


if __name__ == '__main__':
    main()
