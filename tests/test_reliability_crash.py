"""Crash safety and one writer per run directory (issue 7, items 1 and 6), against the real `train` command.

One training run (`train --config C --resume`, a tiny fp32 CPU model, constant learning rate, no dropout,
a checkpoint every 2 steps, max_keep 2) is SIGKILLed at 10 seeded moments, and restarted with the same
command after each kill. 7 of the kills land *inside* a checkpoint write, at a chosen filesystem event
(`tests/faults.py`, PAUSE_HOOK: the process stops dead right after that event and the test SIGKILLs it):

    tmp-created        the temporary folder of the save has just been made (empty)
    model-written      model.safetensors is in the temporary folder, nothing else
    tokenizer-copy     the tokenizer artifacts are being copied into the temporary folder
    manifest-written   the temporary folder is complete but not yet renamed into place
    renamed            the checkpoint was renamed into place; pruning and the log line not done yet
    pruning            an old checkpoint was moved aside for deletion but not deleted
    replacing          a corrupt checkpoint of the same step was just swapped for the new one (atomic exchange;
                       where the platform has none: moved aside, the new one not yet in place)

The other 3 are random moments: after a seeded step number shows up in the log, plus a seeded delay.
The order of the 10 kills, the steps and the delays come from one seed (`$TNB_RELIABILITY_SEED`).

After each kill: every `step_*` folder verifies (a save never leaves a checkpoint that looks complete
but is not); the newest valid checkpoint is at least the last one the killed process reported complete
(so no more than the steps since then are lost); the restarted `train --resume` logs that it resumed
from exactly that checkpoint and takes over the dead process's lock. At the end the run directory has
no leftovers, and the final weights and optimizer state equal those of an uninterrupted run (bitwise),
as does the loss of every step any of the processes logged.

While one killed-to-be process is paused inside a save, a second `train` on the same run directory is
started: it must refuse with one line naming the holder's pid, and leave the holder's lock alone.
"""
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faults import (CKPT_RE, RESUMED_RE, STEP_RE, Proc, assert_user_error, command, config_dict, flip_byte,
                    hook_dir, make_assets, pause_env, print_summary, tally, train_in_process, write_config)
from transformer_nb.checkpoint import _SWAP, checkpoint_name, checkpoint_step, latest_checkpoint, list_checkpoints, verify_checkpoint

T, EVERY, KEEP = 40, 2, 2          # steps, checkpoint period, checkpoints kept
SEED = int(os.environ.get('TNB_RELIABILITY_SEED', '72025'))     # the seed of the kill plan
SAVE_PHASES = ['tmp-created', 'model-written', 'tokenizer-copy', 'manifest-written', 'renamed', 'pruning', 'replacing']
N_RANDOM = 3


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Assets, the config, the pause hook, and the uninterrupted reference run (in this process)."
    d = tmp_path_factory.mktemp('crash')
    assets = make_assets(d / 'assets')
    cfg = write_config(d / 'train.yaml', config_dict(assets, d / 'run', steps=T, every=EVERY, keep=KEEP))
    t0 = time.time()
    ref = train_in_process(cfg, [f'runtime.checkpoint.directory={d / "ref" / "checkpoints"}'])
    assert ref.step == T
    yield {'dir': d, 'cfg': cfg, 'run': d / 'run', 'ck': d / 'run' / 'checkpoints', 'hook': hook_dir(d / 'hook'),
           'ref_ck': d / 'ref' / 'checkpoints' / checkpoint_name(T),
           'ref_losses': {r['step']: r['loss'] for r in ref.history['train']}, 'ref_seconds': time.time() - t0}
    print_summary(tmp_path_factory, 'crash')


def next_save(step: int) -> int:
    return (step // EVERY + 1) * EVERY


def valid_checkpoints(ck: Path) -> list[Path]:
    return [p for p in list_checkpoints(ck) if not verify_checkpoint(p)]


def pause_spec(phase: str, s: int) -> tuple[str, dict]:
    "(event, patterns) of the filesystem event at which the save of step `s` is interrupted."
    n, tmp = checkpoint_name(s), rf'/checkpoints/\.tmp-{checkpoint_name(s)}-[^/]+'
    return {'tmp-created': ('mkdir', {'path': tmp + '$'}),
            'model-written': ('fsync', {'path': tmp + r'/model\.safetensors$'}),
            'tokenizer-copy': ('fsync', {'path': tmp + r'/tokenizer/'}),
            'manifest-written': ('fsync', {'path': tmp + r'/manifest\.json$'}),
            'renamed': ('rename', {'src': tmp + '$', 'dst': rf'/checkpoints/{n}$'}),
            'pruning': ('rename', {'src': r'/checkpoints/step_\d{12}$', 'dst': r'/checkpoints/\.trash-step_\d{12}-'}),
            'replacing': ('exchange', {'src': tmp + '$', 'dst': rf'/checkpoints/{n}$'}) if _SWAP is not None else
                         ('rename', {'src': rf'/checkpoints/{n}$', 'dst': rf'/checkpoints/\.old-{n}-'}),
            }[phase]


def make_plan(rng: random.Random) -> list[str]:
    plan = SAVE_PHASES + ['random'] * N_RANDOM
    rng.shuffle(plan)
    return plan


def read_metrics(path: Path) -> tuple[list[dict], int]:
    "Train rows of metrics.jsonl, and the number of lines torn by a kill (unparseable)."
    rows, torn = [], 0
    for line in path.read_text().splitlines():
        try: r = json.loads(line)
        except ValueError: torn += 1; continue
        if r.get('kind') == 'train': rows.append(r)
    return rows, torn


def test_sigkill_at_ten_moments_then_resume(world, tmp_path_factory):
    cfg, ck, run = world['cfg'], world['ck'], world['run']
    rng = random.Random(SEED)
    plan = make_plan(rng)
    start = 0                  # the step the next process resumes from (0: from scratch)
    prev_pid = None            # the pid of the process killed last (its lock is stale)
    table, stats = [], {'kills': 0, 'inside_save': 0, 'random': 0, 'lost_steps': 0, 'stale_locks': 0,
                        'second_writer_refused': 0, 'corrupt_skipped': 0}
    t_all = time.time()

    def check_start(proc, expected: int):
        "The restarted process resumed from exactly `expected` and took over the stale lock."
        if expected == 0:
            assert 'starting from scratch' in proc.stdout, proc.stdout[-2000:]
        else:
            m = [RESUMED_RE.match(l) for l in proc.out if RESUMED_RE.match(l)]
            assert m, f"no 'resumed from' line:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            assert int(m[0].group(2)) == expected and m[0].group(1).endswith(checkpoint_name(expected)), m[0].group(0)
        if prev_pid is not None:
            assert re.search(rf'taking over stale lock .* of pid {prev_pid}\b', proc.stderr), proc.stderr[-2000:]
            stats['stale_locks'] += 1

    for i in range(len(plan)):
        if plan[i] == 'replacing' and len(valid_checkpoints(ck)) < 2 and i + 1 < len(plan):
            plan[i], plan[i + 1] = plan[i + 1], plan[i]      # it needs two complete checkpoints: a little later
        kind = plan[i]
        marker = world['dir'] / f'paused-{i}.json'
        env, s, expect_from, killer = None, None, start, None
        if kind == 'random':
            k, delay = start + rng.randint(1, 2 * EVERY), rng.uniform(0.0, 0.1)
            fired = []
            def killer(proc, line, k=k, delay=delay, fired=fired):
                m = STEP_RE.match(line)
                if m and int(m.group(1)) >= k and not fired:
                    fired.append(int(m.group(1))); time.sleep(delay); proc.kill()
            what = f'after step {k} + {delay * 1000:.0f} ms'
        else:
            if kind == 'replacing':        # the newest checkpoint is corrupt: resume skips it, then re-saves its step
                valid = valid_checkpoints(ck)
                assert len(valid) >= 2, valid
                flip_byte(valid[-1] / 'model.safetensors')
                s, expect_from = checkpoint_step(valid[-1]), checkpoint_step(valid[-2])
            else:
                s = next_save(start) + EVERY * rng.randint(0, 1)
            event, patterns = pause_spec(kind, s)
            env = pause_env(world['hook'], marker, event, **patterns)
            what = f'save of step {s}' if kind != 'pruning' else 'first pruning'
        proc = Proc('train', '--config', cfg, '--resume', env=env, on_line=killer)
        if kind != 'random':
            reached = proc.wait_until(marker.exists, timeout=150)
            assert reached, f"never reached {kind} ({what}): rc {proc.p.poll()}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            event_seen = json.loads(marker.read_text())['event']
            if stats['second_writer_refused'] == 0:          # item 6: a second writer while this one holds the run
                r = command('train', '--config', cfg, '--resume', timeout=120)
                line = assert_user_error(r.returncode, r.stderr, f'pid {proc.pid}', r.stdout)
                assert 'in use' in line and str(run) in line, line
                assert proc.p.poll() is None, 'the holder died'
                assert json.loads((run / 'train.lock').read_text())['pid'] == proc.pid, 'the holder lost its lock file'
                stats['second_writer_refused'] += 1
            proc.kill()
        rc = proc.wait(timeout=150)
        assert rc == -signal.SIGKILL, f"kill {i} ({kind}): exit status {rc}, expected SIGKILL\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        check_start(proc, expect_from)
        if kind == 'replacing':
            assert re.search(rf'skipping corrupt checkpoint \S*{checkpoint_name(s)}: \S*model\.safetensors: sha256 mismatch',
                             proc.stderr), proc.stderr[-2000:]
            stats['corrupt_skipped'] += 1

        # what the killed process had done, and what is on disk now
        steps_seen = [int(m.group(1)) for l in proc.out if (m := STEP_RE.match(l))]
        last_step = max(steps_seen, default=expect_from)
        reported = max([int(m.group(1)) for l in proc.out if (m := CKPT_RE.match(l))] + [expect_from])
        bad = {p.name: verify_checkpoint(p) for p in list_checkpoints(ck)}
        assert not any(bad.values()), f"kill {i} ({kind}) left a checkpoint that looks complete but is not: {bad}"
        latest = latest_checkpoint(ck)
        now = checkpoint_step(latest) if latest else 0
        assert reported <= now <= max(last_step, expect_from), (kind, reported, now, last_step)
        lost = last_step - now
        assert lost <= last_step - reported                  # no more than the steps since the last complete checkpoint
        if kind == 'renamed': assert now == s                 # renamed into place = complete, even if never reported
        leftovers = sorted(p.name for p in ck.iterdir() if p.name.startswith('.')) if ck.is_dir() else []
        table.append((i, kind, what, proc.pid, last_step, reported, now, lost, ' '.join(leftovers) or '-'))
        stats['kills'] += 1
        stats['inside_save' if kind != 'random' else 'random'] += 1
        stats['lost_steps'] += lost
        prev_pid, start = proc.pid, now

    # the last restart runs to the end
    proc = Proc('train', '--config', cfg, '--resume')
    rc = proc.wait(timeout=240)
    assert rc == 0, f"final resume failed: {rc}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    check_start(proc, start)
    final = ck / checkpoint_name(T)
    assert verify_checkpoint(final) == []
    assert not (run / 'train.lock').exists()
    assert not [p.name for p in ck.iterdir() if p.name.startswith('.')], 'leftover temporary/trash folders'
    assert len(valid_checkpoints(ck)) <= KEEP
    for f in ('model.safetensors', 'optimizer.safetensors'):
        got, want = load_file(final / f), load_file(world['ref_ck'] / f)
        assert got.keys() == want.keys(), f
        diff = [k for k in want if not torch.equal(got[k], want[k])]
        assert not diff, f"{f}: tensors differ from the uninterrupted run: {diff[:5]}"
    assert (final / 'optimizer.json').read_text() == (world['ref_ck'] / 'optimizer.json').read_text()
    rows, torn = read_metrics(run / 'metrics.jsonl')
    # each step once: a resume drops the rows logged after its checkpoint (and lines torn by a kill)
    assert sorted(r['step'] for r in rows) == list(range(1, T + 1)) and torn == 0
    off = [(r['step'], r['loss'], world['ref_losses'][r['step']]) for r in rows
           if abs(r['loss'] - world['ref_losses'][r['step']]) > 1e-6]
    assert not off, f"logged losses differ from the uninterrupted run: {off[:5]}"

    print(f"\ncrash test: {stats['kills']} SIGKILLs survived in {time.time() - t_all:.0f} s "
          f"(reference run {world['ref_seconds']:.1f} s); {len(rows)} logged steps, each once, all equal to the "
          f"uninterrupted run")
    print(f"{'#':>2} {'kind':16} {'moment':24} {'pid':>7} {'last step':>9} {'reported':>8} {'on disk':>7} {'lost':>4}  leftovers")
    for row in table: print(f"{row[0]:>2} {row[1]:16} {row[2]:24} {row[3]:>7} {row[4]:>9} {row[5]:>8} {row[6]:>7} {row[7]:>4}  {row[8]}")
    tally(tmp_path_factory, kills_survived=stats['kills'], kills_inside_checkpoint_write=stats['inside_save'],
          kills_at_random_moments=stats['random'], steps_lost_to_kills=stats['lost_steps'],
          stale_locks_taken_over=stats['stale_locks'], second_writers_refused=stats['second_writer_refused'],
          corruptions_detected=stats['corrupt_skipped'])

