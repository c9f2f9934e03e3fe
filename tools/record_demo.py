"""Run `make demo`'s pipeline and record what it printed and wrote in nbs/demo-run.json, the file the landing page
(nbs/index.ipynb) and the README show as "A real run".

    python tools/record_demo.py                      # runs/local-smoke, then nbs/demo-run.json and README.md
    python tools/record_demo.py --run-dir runs/x --out /tmp/demo-run.json --no-readme
    python tools/record_demo.py --readme-only        # README.md from the nbs/demo-run.json there is

It removes DIR when it exists, runs `orchestrate --profile local --run-dir DIR` (the command `make demo` runs) in a
fresh process, and keeps: the command, the machine (CPU, cores, torch) and the share of the CPU time other processes used meanwhile,
the last lines it printed (its summary), the training and validation losses by step (from the run's
metrics.jsonl), and the first lines of samples.txt. Then it writes the README's "A real run" from that record (the
machine, the summary, the first samples), which tests/test_readme.py checks.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_LINES = 8          # of samples.txt after its two header lines
README_SAMPLE_LINES = 7   # of those, in the README


def update_readme(record: dict, readme: Path = REPO / 'README.md') -> None:
    "The README's 'A real run' section quoting `record`: its machine, its summary and its first sample lines."
    text = readme.read_text(encoding='utf-8')
    head, sep, rest = text.partition('\n## A real run\n')
    if not sep: sys.exit(f"{readme}: no '## A real run' section")
    section, nxt, tail = rest.partition('\n## ')
    m = record['machine']
    cpu = ' '.join(re.sub(r'\((R|TM)\)', '', m['cpu']).split()[:2])               # 'Intel(R) Xeon(R) ...' -> 'Intel Xeon'
    threads = f"{m['threads']} thread{'s' * (m['threads'] != 1)}"
    machine = f"{m['cpu_count']}-core {cpu} CPU ({threads}), torch {m['torch'].split('+')[0]}"
    section = re.sub(r'on a\s+\d+-core .*? CPU( \(\d+ threads?\))?, torch [\w.]+', lambda _: f'on a\n{machine}', section,
                     count=1, flags=re.S)
    blocks = iter(['\n'.join(record['summary']), '\n'.join(record['samples'][:README_SAMPLE_LINES])])
    section = re.sub(r'```\n.*?\n```', lambda _: f'```\n{next(blocks)}\n```', section, count=2, flags=re.S)
    readme.write_text(head + sep + section + nxt + tail, encoding='utf-8')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--run-dir', type=Path, default=REPO / 'runs' / 'local-smoke')
    ap.add_argument('--out', type=Path, default=REPO / 'nbs' / 'demo-run.json')
    what = ap.add_mutually_exclusive_group()
    what.add_argument('--no-readme', action='store_true', help="record only, leave README.md as it is")
    what.add_argument('--readme-only', action='store_true', help="write README.md from the record in --out, run nothing")
    a = ap.parse_args(argv)
    default_out = a.out.resolve() == (REPO / 'nbs' / 'demo-run.json').resolve()
    if a.readme_only:
        update_readme(json.loads(a.out.read_text(encoding='utf-8')))
        return
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
    # the threads the run trained on (the profile's, which --threads changes), not this process's
    machine = machine_info()
    m = re.search(r'^CPU threads: (\d+)', r.stdout + '\n' + r.stderr, re.M)
    if m is None: sys.exit("orchestrate did not say how many CPU threads it trained on ('CPU threads: N')")
    machine['threads'] = int(m.group(1))
    start = max(i for i, line in enumerate(lines) if line.startswith('orchestrate: done'))
    rows = [json.loads(x) for x in (run_dir / 'metrics.jsonl').read_text().splitlines() if x.strip()]
    samples = (run_dir / 'samples.txt').read_text().splitlines()
    body = samples[2:]
    while body and not body[0].strip(): body.pop(0)          # (the blank line under the two header lines)
    record = {
        'schema': 'transformer_nb.demo-run/1', 'created_at': utc_now_iso(),
        'command': ' '.join(cmd[:5]), 'ran': ' '.join(cmd), 'machine': machine, 'others_cpu_share': cpu.others,
        'summary': lines[start:],
        'train_loss': [[x['step'], x['loss']] for x in rows if x.get('kind') == 'train' and 'loss' in x],
        'eval_loss': [[x['step'], x['loss']] for x in rows if x.get('kind') == 'eval' and 'loss' in x],
        'samples_header': samples[:2], 'samples': body[:SAMPLE_LINES]}
    a.out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    print('\n'.join(record['summary']))
    print(f"recorded in {a.out}")
    if not a.no_readme and default_out:          # (the README quotes nbs/demo-run.json, no other record)
        update_readme(record)
        print("README.md: 'A real run' rewritten from it")


if __name__ == '__main__':
    main()
