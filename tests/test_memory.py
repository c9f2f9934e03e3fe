"""`estimate_memory` against what a real step keeps: the optimizer state of AdamW and of Muon + AdamW exactly, and
the values saved for the backward pass under bf16 autocast (fp32 residual stream, norms' inputs and logits;
autocast's bf16 weight copies) within 10%."""
import pytest
import torch

from transformer_nb.bench import estimate_memory
from transformer_nb.config import Config, DataConfig, ModelConfig, OptimizerConfig, RuntimeConfig
from transformer_nb.model import DecoderModel
from transformer_nb.optim import build_optimizer
from transformer_nb.parallel import apply_activation_checkpointing


def config(algorithm='adam_w', precision='fp32', checkpointing=False, **model):
    m = dict(hidden_size=64, intermediate_size=256, num_layers=3, num_attention_heads=4, max_position_embeddings=64)
    return Config(model=ModelConfig(**{**m, **model}), data=DataConfig(batch_size=4),
                  optimizer=OptimizerConfig(algorithm=algorithm),
                  runtime=RuntimeConfig(precision=precision, activation_checkpointing=checkpointing))


def measure(cfg, vocab):
    "(bytes saved for backward other than the parameters, bytes of optimizer state after one step) on the CPU."
    torch.manual_seed(0)
    model = DecoderModel(cfg.model, vocab)
    if cfg.runtime.activation_checkpointing: apply_activation_checkpointing(model)
    ids = torch.randint(0, vocab, (cfg.micro_batch_size(), cfg.sequence_length))
    weights, saved = {p.untyped_storage().data_ptr() for p in model.parameters()}, {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in weights: saved[key] = t.untyped_storage().nbytes()
        return t
    dtype = {'bf16': torch.bfloat16}.get(cfg.runtime.precision)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
         torch.autocast('cpu', dtype=dtype, enabled=dtype is not None):
        _, loss = model(ids, ids)
    opt = build_optimizer(model, cfg.optimizer, torch.device('cpu'))
    loss.backward(); opt.step()
    state = sum(t.nbytes for s in opt.state.values() for t in s.values() if t.dim())   # (not AdamW's step counts)
    return sum(saved.values()), state


@pytest.mark.parametrize('algorithm', ['adam_w', 'muon'])
@pytest.mark.parametrize('model', [{}, {'num_key_value_heads': 2, 'activation': 'gelu'}])
def test_optimizer_state_is_exact(algorithm, model):
    cfg = config(algorithm, **model)
    est = estimate_memory(cfg, vocab_size=512, device_type='cpu')
    assert est['optimizer'] == measure(cfg, 512)[1]


def test_muon_state_per_rank_under_ddp():
    cfg = config('muon')
    one, ddp = (estimate_memory(cfg, w, vocab_size=512, device_type='cpu') for w in (1, 2))
    assert one['optimizer'] == ddp['optimizer'] < estimate_memory(config(), vocab_size=512)['optimizer']


@pytest.mark.parametrize('vocab,checkpointing', [(512, False), (4096, False), (4096, True)])
def test_bf16_saved_values_match_a_real_step(vocab, checkpointing):
    cfg = config('muon', 'bf16', checkpointing)
    est = estimate_memory(cfg, vocab_size=vocab, device_type='cuda')    # the GPU estimate: the same model code
    saved, _ = measure(cfg, vocab)
    assert abs((est['activations_saved'] + est['autocast_weights']) / saved - 1) < 0.1
