"""Checkpoints written before the training layer was redesigned still resume, exactly.

`tests/fixtures/old_checkpoints` was written by transformer_nb at commit 82482b8 (before the Trainer was split into
components): a tiny corpus and tokenizer, and for AdamW and for Muon a run of 8 steps (dropout on, 2 accumulation
steps, cosine schedule) of which only the checkpoint of step 4 is kept, with the losses and final weights of the
uninterrupted 8-step run. Resuming that checkpoint with today's code must give the same steps 5-8 and weights, up
to float32 rounding: since then RMSNorm and RoPE compute the same functions in another order of operations.

Muon's update itself has changed since: it orthogonalises q, k and v of the fused QKV weight separately (the old code
orthogonalised the stacked matrix). An old Muon checkpoint still loads and resumes at the same weights (step 5's loss,
computed before the first new update, is the same); the steps after it follow the new update and are only close."""
import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest

from transformer_nb.trainer import Trainer

FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'old_checkpoints'


@pytest.mark.parametrize('name', ['adamw', 'muon'])
def test_a_checkpoint_of_the_old_trainer_resumes_exactly(tmp_path, name):
    run = tmp_path / 'fixture'
    shutil.copytree(FIXTURE, run)
    ref = json.loads((run / f'{name}-uninterrupted.json').read_text())
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter('ignore')
        t = Trainer(run / f'{name}.yaml', resume=True, show_progress=False)
        result = t.fit()
    assert f"resumed from {run / name / 'checkpoints' / 'step_000000000004'}" in out.getvalue()
    assert [r['step'] for r in t.history['train']] == [5, 6, 7, 8] and result['step'] == 8
    for r in t.history['train']:
        tol = 1e-6 if name == 'adamw' or r['step'] == 5 else 1e-2
        assert abs(r['loss'] - ref['losses'][str(r['step'])]) <= tol, (r['step'], r['loss'])
    if name == 'muon':
        return
    sums = {k: float(v.double().sum()) for k, v in t.raw_model.state_dict().items()}
    assert sums.keys() == ref['weights_sum'].keys()
    for k, v in sums.items():
        assert abs(v - ref['weights_sum'][k]) <= 1e-6 * max(1.0, abs(v)), k
