"""The commands in a real terminal (issue 18): files, progress output, help and messages as a user meets them."""
import os
import stat
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
