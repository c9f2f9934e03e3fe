"""MFU that cannot mislead: exact GPU-name matching for the datasheet peak, the source of the peak named, figures
above 100% flagged, the figure always in the log line; the TF32 and bf16 checks of torch >= 2.9."""
import contextlib
import io
import json
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from faults import config_dict, make_assets, write_config
from transformer_nb import device as device_mod
from transformer_nb.device import (PeakFlops, TrainingError, cuda_bf16_native, datasheet_peak, gpu_model,
                                   peak_flops, resolve_precision, tf32_enabled)
from transformer_nb.metrics import mfu_text

# torch.cuda.get_device_name strings -> (table entry, dense bf16 TFLOP/s, plain fp32 TFLOP/s)
NAMES = [
    ('NVIDIA H100 80GB HBM3', 'H100', 989, 67),
    ('NVIDIA H100 PCIe', 'H100 PCIE', 756, 51),
    ('NVIDIA H100 NVL', 'H100 NVL', 835, 60),
    ('NVIDIA H200', 'H200', 989, 67),
    ('NVIDIA H200 NVL', 'H200 NVL', 835, 60),
    ('NVIDIA A100-SXM4-80GB', 'A100', 312, 19.5),
    ('NVIDIA A100-PCIE-40GB', 'A100', 312, 19.5),
    ('NVIDIA A100 80GB PCIe', 'A100', 312, 19.5),
    ('NVIDIA L4', 'L4', 121, 30.3),
    ('NVIDIA L40', 'L40', 181, 90.5),
    ('NVIDIA L40S', 'L40S', 362, 91.6),
    ('Tesla V100-SXM2-16GB', 'V100', 125, 15.7),
    ('Tesla V100-PCIE-32GB', 'V100 PCIE', 112, 14),
    ('Tesla T4', 'T4', 65, 8.1),
    ('NVIDIA A10G', 'A10G', 70, 31.2),
    ('NVIDIA GeForce RTX 4090', None, None, None),
    ('NVIDIA H800', None, None, None),
    ('NVIDIA L4S', None, None, None),
    ('NVIDIA H100 80GB HBM3 MIG 1g.10gb', None, None, None),       # a MIG slice: the peak is measured
    ('NVIDIA A100-SXM4-40GB MIG 3g.20gb', None, None, None),
]


@pytest.mark.parametrize('name,model,bf16,fp32', NAMES)
def test_datasheet_peak_matches_the_exact_gpu(name, model, bf16, fp32):
    assert gpu_model(name) == model
    got = datasheet_peak(name, 'bf16'), datasheet_peak(name, 'fp32', tf32=False)
    assert got == ((bf16 * 1e12, fp32 * 1e12) if model else (None, None))


def test_peak_names_its_source(monkeypatch):
    monkeypatch.delenv('TNB_PEAK_FLOPS', raising=False)
    monkeypatch.setattr(device_mod, 'measure_matmul_flops', lambda device, dtype=None, *a, **k: 5e10)
    cpu = peak_flops(torch.device('cpu'))
    assert (cpu.flops, cpu.source, cpu.measured) == (5e10, 'measured', True)
    assert 'fraction of the measured float32 matmul peak' in cpu.describe()
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None: 'NVIDIA H100 NVL')
    gpu = peak_flops(torch.device('cuda'), 'bf16')
    assert (gpu.flops, gpu.source, gpu.measured) == (835e12, 'datasheet', False)
    assert gpu.describe().startswith('MFU against the H100 NVL bf16 datasheet peak')
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda d=None: 'NVIDIA GeForce RTX 4090')
    assert peak_flops(torch.device('cuda'), 'bf16').measured        # unknown GPU: measured, and named so
    monkeypatch.setenv('TNB_PEAK_FLOPS', '1e12')
    assert peak_flops(torch.device('cuda')) == PeakFlops(1e12, 'TNB_PEAK_FLOPS')


def test_mfu_above_100_percent_is_flagged_never_clamped():
    assert mfu_text(0.25) == 'mfu 25.0%'
    assert mfu_text(0.25, measured=True) == '25% of peak'
    assert mfu_text(1.81, measured=True) == '181% of peak (>100%: peak under-measured)'
    assert mfu_text(1.2).startswith('mfu 120.0% (>100%')


def test_tf32_enabled_under_the_new_fp32_precision_api():
    def legacy_raises(): raise RuntimeError('mix of the legacy and new APIs')
    with mock.patch.object(torch.backends.cuda, 'matmul', SimpleNamespace(fp32_precision='tf32')), \
         mock.patch.object(torch, 'get_float32_matmul_precision', legacy_raises):
        assert tf32_enabled()
        assert datasheet_peak('NVIDIA H100 80GB HBM3', 'fp32') == 494e12
    with mock.patch.object(torch.backends.cuda, 'matmul', SimpleNamespace(fp32_precision='ieee')), \
         mock.patch.object(torch, 'get_float32_matmul_precision', legacy_raises):
        assert not tf32_enabled()
    backends = SimpleNamespace(cuda=SimpleNamespace(matmul=SimpleNamespace(fp32_precision='none')), fp32_precision='tf32')
    with mock.patch.object(torch, 'backends', backends), \
         mock.patch.object(torch, 'get_float32_matmul_precision', legacy_raises):
        assert tf32_enabled()                                       # inherited from the global setting


def test_bf16_needs_native_support_not_emulation():
    with mock.patch.object(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation), \
         mock.patch.object(torch.cuda, 'get_device_name', lambda d=None: 'Tesla V100-SXM2-16GB'):
        assert not cuda_bf16_native()
        with pytest.raises(TrainingError, match='V100-SXM2-16GB has no bf16 support'):
            resolve_precision('bf16', torch.device('cuda'))


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp('mfu') / 'assets')


@pytest.mark.parametrize('measured', [False, True])
def test_log_line_keeps_a_flagged_mfu_in_80_columns(assets, tmp_path, monkeypatch, measured):
    "An MFU far above 100% (a tiny peak) is printed, flagged and named, in an 80-column log line and the jsonl."
    from transformer_nb import trainer as trainer_mod
    from transformer_nb.config import load_config
    monkeypatch.setenv('COLUMNS', '80')
    monkeypatch.delenv('TNB_PEAK_FLOPS', raising=False)
    monkeypatch.setattr(trainer_mod, 'peak_flops', lambda device, precision: PeakFlops(1e6, 'measured', 'float32'))
    cfg = load_config(write_config(tmp_path / 'c.yaml', config_dict(assets, tmp_path / 'run', hidden=32, steps=2)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        t = trainer_mod.Trainer(cfg, show_progress=False, peak_flops=None if measured else 1e6)
        t.fit()
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith('step ')]
    assert lines, out.getvalue()
    flag = '% of peak (>100%: peak under-measured)' if measured else '% (>100%: above the peak, check it)'
    assert all(flag in ln for ln in lines), lines
    assert ("'of peak': the fraction of the measured" in out.getvalue()) == measured
    rows = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    mfu_rows = [r for r in rows if 'mfu' in r]
    assert mfu_rows and all(r['mfu'] > 1 and r['peak_source'] == ('measured' if measured else 'given')
                            for r in mfu_rows)
