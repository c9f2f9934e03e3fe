"""The commands in a real terminal (issue 18): files, progress output, help and messages as a user meets them."""
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

from faults import make_assets


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp('terminal') / 'assets')


# --- item 10: file modes ------------------------------------------------------------------------------------------

def test_checkpoint_files_follow_the_umask(assets, tmp_path):
    "Every file of a checkpoint (weights, optimizer, tokenizer copy, config) gets the mode `open()` would give it."
    from transformer_nb.checkpoint import save_checkpoint
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(m.parameters())
    old = os.umask(0o027)
    try: ck = save_checkpoint(tmp_path / 'ck', 1, m, opt, {}, config={'a': 1}, tokenizer_dir=assets['tok'])
    finally: os.umask(old)
    modes = {f.relative_to(ck).as_posix(): oct(stat.S_IMODE(f.stat().st_mode)) for f in ck.rglob('*') if f.is_file()}
    assert {'model.safetensors', 'optimizer.safetensors', 'training.yaml', 'tokenizer/tokenizer.json'} <= set(modes)
    assert set(modes.values()) == {oct(0o640)}, modes


# --- item 9: a stated val_fraction is the plan, not a warning ------------------------------------------------------

def test_no_validation_warning_when_val_fraction_is_stated(assets, tmp_path):
    from faults import config_dict, write_config
    from transformer_nb.config import load_config
    from transformer_nb.training import Trainer
    seen = {}
    for stated in (True, False):
        d = config_dict(assets, tmp_path / f'run{stated}', steps=1, every=1)
        d['data']['validation_shards'] = []
        if stated: d['data']['val_fraction'] = 0.1
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            with Trainer(load_config(write_config(tmp_path / f'{stated}.yaml', d)), show_progress=False): pass
        seen[stated] = [str(x.message) for x in w if 'validation_shards' in str(x.message)]
    assert seen[True] == [], seen[True]
    assert len(seen[False]) == 1 and 'data.val_fraction=0.1' in seen[False][0]
