"""The CUDA path (issue 13, item 6): skipped without a GPU; `make gpu-check` runs it with `tnb bench --device cuda`.

- bf16 and fp16 autocast training steps through the Trainer (fp16 with its GradScaler): finite, learning;
- fused AdamW is what the Trainer builds on CUDA, and its step equals the plain (for-each) AdamW's;
- SDPA (flash / memory-efficient kernels) against the reference attention in bf16, forward and backward;
- torch.compile: the compiled model's logits and loss equal eager mode's; compiled decoding (CUDA graphs) compiles
  once for prompts of ten lengths and gives the uncached greedy tokens;
- 2 GPUs (skipped with fewer): a 2-step run under DDP and under FSDP2 with NCCL, each matching one GPU;
- checkpoints (safetensors and DCP) written from CUDA load on the CPU and back, bit for bit.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

from transformer_nb.attention import attention_reference
from transformer_nb.checkpoint import (checkpoint_model_tensors, load_checkpoint, save_checkpoint,
                                       save_dcp_checkpoint)
from transformer_nb.config import ModelConfig, config_from_dict, save_config
from transformer_nb.model import DecoderModel
from transformer_nb.trainer import Trainer
from transformer_nb.optim import build_optimizer

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 GPUs')
SCRIPT = textwrap.dedent('''
    import sys, warnings
    warnings.simplefilter('ignore')
    from transformer_nb.config import load_config
    from transformer_nb.trainer import Trainer
    Trainer(load_config(sys.argv[1]), show_progress=False).fit()
''')


def small_model_config(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(hidden_size=128, intermediate_size=512, num_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=128), **kw})


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    from transformer_nb.tokenizer import train_bbpe
    d = tmp_path_factory.mktemp('cuda')
    text = SHAKESPEARE.read_text(encoding='utf-8')[:60_000] if SHAKESPEARE.is_file() else \
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 700
    (d / 'corpus.txt').write_text(text, encoding='utf-8')
    train_bbpe([d / 'corpus.txt'], d / 'tok', vocab_size=384, show_progress=False)
    (d / 'train.py').write_text(SCRIPT)
    return d


def run_config(d: Path, name: str, steps: int = 8, **runtime):
    rt = {'seed': 0, 'device': 'cuda', 'log_every_n_steps': 1, 'precision': 'fp32',
          'checkpoint': {'directory': str(d / name / 'checkpoints'), 'every_n_steps': steps},
          'evaluation': {'every_n_steps': steps, 'max_batches': 1}, 'logging': {'tensorboard': None}, **runtime}
    return config_from_dict({
        'model': {'hidden_size': 64, 'intermediate_size': 256, 'num_layers': 2, 'num_attention_heads': 4,
                  'num_key_value_heads': 2, 'max_position_embeddings': 64},
        'tokenizer': {'tokenizer_json': str(d / 'tok' / 'tokenizer.json')},
        'data': {'train_shards': [str(d / 'corpus.txt')], 'batch_size': 8, 'cache_dir': str(d / 'data')},
        'optimizer': {'learning_rate': 3e-3}, 'scheduler': {'strategy': 'constant', 'total_steps': steps},
        'runtime': rt})


def losses(run: Path) -> list[float]:
    rows = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
    return [r['loss'] for r in rows if r['kind'] == 'train']


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_autocast_training_steps(assets, precision):
    if precision == 'bf16' and not torch.cuda.is_bf16_supported(): pytest.skip('no bf16 on this GPU')
    t = Trainer(run_config(assets, f'amp-{precision}', precision=precision), show_progress=False)
    assert t.fused and (t.scaler is not None) == (precision == 'fp16')
    t.fit()
    ls = losses(assets / f'amp-{precision}')
    assert len(ls) == 8 and all(map(lambda x: x == x and abs(x) < 100, ls)) and ls[-1] < ls[0] - 0.5, ls


def test_fused_adamw_equals_foreach():
    torch.manual_seed(0)
    a = DecoderModel(small_model_config(), 300).cuda()
    b = DecoderModel(small_model_config(), 300).cuda()
    b.load_state_dict(a.state_dict())
    cfg = config_from_dict({'optimizer': {'learning_rate': 1e-3}}).optimizer
    assert build_optimizer(a, cfg, torch.device('cuda')).param_groups[0].get('fused'), 'the Trainer gets fused AdamW on CUDA'
    kw = dict(lr=1e-3, betas=(cfg.beta1, cfg.beta2), eps=cfg.epsilon, weight_decay=cfg.weight_decay)
    oa, ob = torch.optim.AdamW(a.parameters(), fused=True, **kw), torch.optim.AdamW(b.parameters(), foreach=True, **kw)
    ids = torch.randint(0, 300, (4, 64), device='cuda')
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            _, loss = m(ids, ids); o.zero_grad(); loss.backward(); o.step()
    worst = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert worst < 1e-5, worst


@pytest.mark.parametrize('gqa', [False, True])
def test_sdpa_matches_reference_in_bf16(gqa):
    torch.manual_seed(0)
    B, H, KV, T, d = 2, 8, (2 if gqa else 8), 256, 64
    q = torch.randn(B, H, T, d, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, KV, T, d, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, KV, T, d, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    rep = lambda x: x.repeat_interleave(H // KV, dim=1)
    fast = torch.nn.functional.scaled_dot_product_attention(q, rep(k), rep(v), is_causal=True)
    mask = torch.ones(T, T, dtype=torch.bool, device='cuda').tril()
    ref = attention_reference(q.float(), rep(k).float(), rep(v).float(), mask)[0]
    assert (fast.float() - ref).abs().max().item() < 2e-2            # bf16 has 8 bits of mantissa
    g = torch.randn_like(fast)
    gf = torch.autograd.grad(fast, (q, k, v), g)
    gr = torch.autograd.grad(ref, (q, k, v), g.float())
    for a, b in zip(gf, gr):
        assert (a.float() - b.float()).abs().max().item() < 5e-2 * max(1.0, b.float().abs().max().item())


def test_compile_matches_eager():
    torch.manual_seed(0)
    m = DecoderModel(small_model_config(), 300).cuda().eval()
    ids = torch.randint(0, 300, (2, 64), device='cuda')
    with torch.no_grad():
        eager_logits, eager_loss = m(ids, ids)
        c_logits, c_loss = torch.compile(m)(ids, ids)
    assert (eager_logits - c_logits).abs().max().item() < 1e-3 and abs(eager_loss.item() - c_loss.item()) < 1e-4



def test_compiled_decoding_compiles_once():
    """Ten prompts of different lengths through `generate_ids(compile=True)` on the GPU, as the code runs it
    ('reduce-overhead': CUDA graphs, over kept cache buffers): at most two graphs compiled, no recompile-limit error
    or eager fallback, CUDA graphs not skipped, and the greedy tokens of the uncached loop."""
    import warnings
    from torch._dynamo.utils import counters
    from transformer_nb.generate import _COMPILED_STEPS, generate_ids
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    m = DecoderModel(small_model_config(max_position_embeddings=512), 300).cuda().eval()
    m.reset_parameters(std=0.3)         # larger weights than at init: well-separated logits, no near ties in argmax
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for k in range(10):
            prompt = [[(7 * i + k) % 300 for i in range(5 * k + 1)]]
            got = generate_ids(m, prompt, 12, temperature=0, compile=True)
            assert got == generate_ids(m, prompt, 12, temperature=0, use_kv_cache=False), k
    assert 1 <= counters['stats']['unique_graphs'] <= 2, dict(counters['stats'])
    assert not [w for w in caught if 'recompile limit' in str(w.message)]
    assert ('reduce-overhead', False) in _COMPILED_STEPS
    assert counters['inductor'].get('cudagraph_skips', 0) == 0, dict(counters['inductor'])

def test_checkpoints_round_trip_between_cuda_and_cpu(tmp_path):
    torch.manual_seed(0)
    gpu = DecoderModel(small_model_config(), 300).cuda()
    opt = torch.optim.AdamW(gpu.parameters(), lr=1e-3)
    _, loss = gpu(torch.randint(0, 300, (2, 32), device='cuda'), torch.randint(0, 300, (2, 32), device='cuda'))
    loss.backward(); opt.step()
    for save in (save_checkpoint, save_dcp_checkpoint):
        p = save(tmp_path / save.__name__, 1, gpu, opt, {})
        cpu = DecoderModel(small_model_config(), 300)
        cpu_opt = torch.optim.AdamW(cpu.parameters(), lr=1e-3)
        load_checkpoint(p, cpu, cpu_opt)
        for (n, a), b in zip(gpu.state_dict().items(), cpu.state_dict().values()):
            assert b.device.type == 'cpu' and torch.equal(a.cpu(), b), n
        back = DecoderModel(small_model_config(), 300).cuda()
        q = save(tmp_path / (save.__name__ + '-cpu'), 1, cpu, cpu_opt, {})
        load_checkpoint(q, back)
        assert all(torch.equal(a, b) for a, b in zip(gpu.state_dict().values(), back.state_dict().values()))
        full = checkpoint_model_tensors(q)
        assert all(torch.equal(a.cpu(), full[n]) for n, a in gpu.state_dict().items())


@TWO_GPUS
@pytest.mark.parametrize('mode', ['ddp', 'fsdp'])
def test_two_gpus_with_nccl_match_one(assets, mode):
    one = assets / f'one-{mode}'
    save_config(run_config(assets, one.name, steps=2, distributed=mode), assets / f'{one.name}.yaml')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', 'CUDA_VISIBLE_DEVICES': '0'}
    p = subprocess.run([sys.executable, str(assets / 'train.py'), str(assets / f'{one.name}.yaml')],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    two = assets / f'two-{mode}'
    save_config(run_config(assets, two.name, steps=2, distributed=mode), assets / f'{two.name}.yaml')
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = {k: v for k, v in env.items() if k != 'CUDA_VISIBLE_DEVICES'}
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--rdzv-backend', 'c10d',
                        '--rdzv-endpoint', f'127.0.0.1:{port}', str(assets / 'train.py'), str(assets / f'{two.name}.yaml')],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f'2 process(es) ({mode.upper()})' in p.stdout
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 2 and max(abs(x - y) for x, y in zip(a, b)) < 1e-3, (a, b)
    wa = checkpoint_model_tensors(one / 'checkpoints' / 'step_000000000002')
    wb = checkpoint_model_tensors(two / 'checkpoints' / 'step_000000000002')
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-3
