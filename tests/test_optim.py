"""Muon + AdamW: each projection of the fused QKV orthogonalised on its own, the learning-rate scale against the
schedule's peak, and the non-finite step skipped on the device (no host sync) for both halves."""
import itertools

import pytest
import torch

from transformer_nb.config import Config, ModelConfig, OptimizerConfig, SchedulerConfig
from transformer_nb.model import DecoderModel
from transformer_nb.optim import adamw, build_optimizer, lr_at, muon_param_groups
from transformer_nb.step import StepSetup, train_step, uses_fused_step


def tiny_model(kv_heads=4, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, max_position_embeddings=16)
    return DecoderModel(cfg, vocab_size=64)


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randint(0, 64, (4, 16), generator=g)
        yield x, x.roll(-1, dims=1)


@pytest.mark.parametrize('kv_heads,adjust', [(4, 'original'), (2, 'original'), (1, 'match_rms_adamw')])
def test_muon_updates_fused_qkv_as_three_separate_matrices(kv_heads, adjust):
    "The fused qkv weight moves exactly as q, k and v would under torch.optim.Muon as three matrices of their own."
    model = tiny_model(kv_heads)
    cfg = OptimizerConfig(algorithm='muon', muon_ns_dtype='bfloat16', muon_weight_decay=0.1, muon_adjust_lr=adjust)
    opt = build_optimizer(model, cfg)
    attn = model.layers[0].attn
    sizes = [attn.num_heads * attn.head_dim] + [attn.num_kv_heads * attn.head_dim] * 2
    refs = [w.detach().clone().requires_grad_() for w in attn.qkv.weight.split(sizes)]
    ref = torch.optim.Muon(refs, lr=cfg.muon_learning_rate, weight_decay=0.1, momentum=cfg.muon_momentum,
                           nesterov=cfg.muon_nesterov, ns_steps=cfg.muon_ns_steps, adjust_lr_fn=adjust)
    data = batches()
    for _ in range(2):  # the second step uses the momentum of the first
        x, y = next(data)
        model(x, y)[1].backward()
        for r, g in zip(refs, attn.qkv.weight.grad.split(sizes)): r.grad = g.clone()
        opt.step(); opt.zero_grad(); ref.step()
    got = attn.qkv.weight.detach().split(sizes)
    for name, a, b in zip('qkv', got, refs):
        assert torch.allclose(a, b.detach(), atol=1e-6, rtol=0), f"{name}: {(a - b).abs().max():.2e}"


def test_muon_groups_mark_the_qkv_splits():
    model = tiny_model(kv_heads=2)
    (muon,), _ = muon_param_groups(model, 0.1)
    splits = dict(zip(muon['names'], muon['splits']))
    assert splits['layers.0.attn.qkv.weight'] == (32, 16, 16)
    assert splits['layers.0.attn.o_proj.weight'] is None and splits['layers.1.mlp.up.weight'] is None


def test_muon_rate_peaks_at_muon_learning_rate_with_max_lr():
    "With scheduler.max_lr set, Muon's rate at the schedule's peak is muon_learning_rate (not scaled by max_lr)."
    config = Config(optimizer=OptimizerConfig(algorithm='muon', learning_rate=1e-3, muon_learning_rate=0.02),
                    scheduler=SchedulerConfig(strategy='cosine', warmup_steps=2, max_lr=4e-3, min_lr=0.0,
                                              total_steps=10))
    model = tiny_model()
    opt = build_optimizer(model, config.optimizer, torch.device('cpu'), config.peak_lr)
    setup = StepSetup(max_norm=1.0, fused=uses_fused_step(opt))
    lr = lr_at(1, config.scheduler, config.optimizer.learning_rate, 10)   # the last warm-up step: the peak
    assert lr == pytest.approx(4e-3)
    train_step(model, opt, batches(), lr, setup)
    assert opt.muon.param_groups[0]['lr'] == pytest.approx(0.02)
    assert opt.adamw.param_groups[0]['lr'] == pytest.approx(4e-3)


def test_skip_decision_for_muon_with_adamw():
    "Muon + fused AdamW skips on the device; a part without a device-side skip makes the whole step host-synced."
    model = tiny_model()
    opt = build_optimizer(model, OptimizerConfig(algorithm='muon'), torch.device('cpu'))
    assert all(g['fused'] for g in opt.adamw.param_groups)   # fused AdamW exists on the CPU in this torch
    assert uses_fused_step(opt)
    opt.adamw = torch.optim.AdamW(opt.adamw.param_groups[0]['params'], fused=False)
    assert not uses_fused_step(opt)
    plain = adamw([{'params': list(model.parameters())}], OptimizerConfig())
    assert uses_fused_step(plain) == bool(plain.param_groups[0]['fused'])
    assert not uses_fused_step(torch.optim.SGD(model.parameters(), lr=0.1))


def test_muon_step_skips_nan_without_host_sync(monkeypatch):
    "A NaN step of Muon + AdamW changes no weight and no optimizer state, and nothing is read on the host."
    model = tiny_model()
    opt = build_optimizer(model, OptimizerConfig(algorithm='muon'), torch.device('cpu'))
    setup = StepSetup(max_norm=1.0, fused=uses_fused_step(opt))
    data = batches()
    train_step(model, opt, data, 1e-3, setup)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = [[v.clone() for v in s.values()] for s in opt.state.values()]
    with torch.no_grad(): model.embed_tokens.weight.mul_(float('inf'))

    def host_read(*a, **k): raise AssertionError('the step read a device value on the host')
    with monkeypatch.context() as m:
        # (not __int__: the model checks CPU token ids with int(), which is no device sync)
        for name in ('__bool__', 'item', 'tolist', '__float__'):
            m.setattr(torch.Tensor, name, host_read)
        loss, norm, bad = train_step(model, opt, data, 1e-3, setup)
    with torch.no_grad(): model.embed_tokens.weight.copy_(before['embed_tokens.weight'])
    assert bool(bad)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    after = [list(s.values()) for s in opt.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(itertools.chain(*after), itertools.chain(*state)))
    # and the next good step trains again
    loss, _, bad = train_step(model, opt, data, 1e-3, setup)
    assert not bool(bad) and not torch.equal(model.layers[0].attn.qkv.weight, before['layers.0.attn.qkv.weight'])
