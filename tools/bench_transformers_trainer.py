"""The same-size Llama model trained by Hugging Face `transformers`' `Trainer`, on the same tokens, for the same CPU
budget, scored on the same held-out text as `tnb bench --quality`: what a user would otherwise run.

    python tools/bench_transformers_trainer.py --corpus wikipedia-vital --tune --lrs 1e-3,3e-3,6e-3 --seeds 1
    python tools/bench_transformers_trainer.py --corpus wikipedia-vital --lrs 3e-3 --seeds 3 --json out.json

The data are `tnb bench --quality`'s: the byte-level BPE tokenizer of configs/shakespeare_cpu.yaml's vocabulary
trained on the training part (or, with --tune, the training part less the tuning split), and its tokens. The model is
`LlamaForCausalLM` of that config's size: 128 wide, 2 layers, 4 heads, tied embeddings, and a SwiGLU MLP of 341
channels (three matrices of 128 x 341: the parameters of the config's two-matrix 512-channel MLP). `Trainer` runs
with its defaults (AdamW, linear decay to zero, no warm-up, gradient clipping at 1.0, weight decay 0) except the
learning rate (its default, 5e-5, is meant for fine-tuning), batch 16 of 128-token windows (shuffled, not
overlapping), one thread. Its step count is set so that the steps fill --budget CPU-seconds (from the time per step
of a 30-step first run, and run once more, rescaled, when the steps took less than 98% of the budget or the budget
ran out first) and a callback stops it at the budget in any case; each step is charged from the end of the one
before, its batch's loading included; the CPU-seconds actually spent are reported. The
held-out figure is computed by the evaluator of `tnb bench --quality` (`quality.heldout_figures`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SEQ, BATCH = 128, 16


class Windows(torch.utils.data.Dataset):
    "Non-overlapping windows of SEQ tokens of the training tokens (the Trainer's sampler shuffles them)."
    def __init__(self, tokens):
        self.t = torch.as_tensor(np.asarray(tokens).astype(np.int64))
    def __len__(self): return (len(self.t) - 1) // SEQ
    def __getitem__(self, i):
        x = self.t[i * SEQ:(i + 1) * SEQ]
        return {'input_ids': x, 'labels': x}


class Scored(torch.nn.Module):
    "A Hugging Face causal LM as the evaluator of `tnb bench --quality` expects it: model(x, y) -> (logits, mean loss)."
    def __init__(self, hf):
        super().__init__(); self.hf = hf
    def forward(self, x, y):
        logits = self.hf(input_ids=x).logits
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def llama(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed
    set_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=341, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                                        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                                        pad_token_id=None))


def train(model, data, lr: float, steps: int, seed: int, budget: float | None) -> list[float]:
    "Train with `Trainer` for `steps` steps (stopped at `budget` CPU-seconds of steps): the CPU time of each step."
    from transformers import Trainer, TrainerCallback, TrainingArguments
    times = []
    # each step is charged from the end of the one before (the first from the start of training): fetching its batch
    # is part of it, as it is in ours and in nanoGPT's loop
    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw): self.last = time.process_time()
        def on_step_end(self, args, state, control, **kw):
            now = time.process_time(); times.append(now - self.last); self.last = now
            if budget is not None and sum(times) >= budget: control.should_training_stop = True
    with tempfile.TemporaryDirectory(prefix='tnb-hf-trainer-') as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, learning_rate=lr, max_steps=steps,
                                 seed=seed, use_cpu=True, report_to='none', save_strategy='no', logging_steps=10 ** 9,
                                 disable_tqdm=True, dataloader_num_workers=0)
        Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()]).train()
    return times


def one_run(texts, lr: float, seed: int, budget: float) -> dict:
    from transformer_nb.config import load_config
    from transformer_nb.quality import heldout_figures, quality_data
    cfg = load_config(REPO / 'configs' / 'shakespeare_cpu.yaml')
    with tempfile.TemporaryDirectory(prefix='tnb-hf-q-') as d:
        info = {}
        _, vocab, data, val_tokens, lengths = quality_data(cfg, texts.train, texts.heldout, Path(d), info, lambda m: None)
        windows = Windows(data.train.tokens)
        probe = train(llama(vocab, seed), windows, lr, 30, seed, None)
        steps = max(1, int(budget / statistics.mean(probe[5:])))
        model = llama(vocab, seed)
        times = train(model, windows, lr, steps, seed, budget)
        # the first run's pace was off (the steps took less than 98% of the budget, or the budget ran out before the
        # schedule did): once more, rescaled
        if sum(times) < 0.98 * budget or len(times) < steps:
            steps = max(1, int(steps * budget / sum(times)))
            model = llama(vocab, seed)
            times = train(model, windows, lr, steps, seed, budget)
        npc, bpb = heldout_figures(Scored(model), val_tokens, lengths, SEQ, BATCH)
    done = len(times)
    return {'seed': seed, 'learning_rate': lr, 'steps': done, 'planned_steps': steps, 'tokens': done * BATCH * SEQ,
            'train_cpu_s': sum(times), 'parameters': sum(p.numel() for p in model.parameters()), 'vocab_size': vocab,
            'epochs': done * BATCH * SEQ / info['train_tokens'], 'nats_per_char': npc,
            'bpb': bpb,
            'load_average': os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--corpus', default='wikipedia-vital')
    ap.add_argument('--tune', action='store_true', help='train without the tuning split, score on it')
    ap.add_argument('--budget', type=float, default=80.0, help='CPU-seconds of training steps (default 80, as tnb bench --quality)')
    ap.add_argument('--lrs', default='1e-3', help='learning rates, comma separated (default 1e-3)')
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--json', default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from transformer_nb.quality import bench_texts
    texts = bench_texts(a.corpus, a.tune)
    print(f"transformers Trainer on {texts.description} ({texts.split}); {a.budget:.0f} CPU-seconds, one thread",
          flush=True)
    from transformer_nb.bench import machine_info
    out = {'corpus': texts.corpus, 'split': texts.split, 'heldout': texts.description, 'budget_cpu_s': a.budget,
           'threads': 1, 'machine': machine_info(), 'configs': []}
    for lr in [float(x) for x in a.lrs.split(',')]:
        runs = []
        for seed in range(1, a.seeds + 1):
            r = one_run(texts, lr, seed, a.budget)
            runs.append(r)
            print(f"lr {lr:g} seed {seed}: {r['steps']} steps ({r['train_cpu_s']:.0f} CPU-s, {r['epochs']:.2f} epochs, "
                  f"{r['parameters']:,} parameters): {r['bpb']:.4f} bits/byte, {r['nats_per_char']:.4f} nats/char",
                  flush=True)
        b = [r['bpb'] for r in runs]
        out['configs'].append({'config': f'transformers Trainer, Llama, lr {lr:g}', 'runs': runs,
                               'mean_bpb': statistics.fmean(b), 'sd_bpb': statistics.stdev(b) if len(b) > 1 else None,
                               'mean_nats_per_char': statistics.fmean(r['nats_per_char'] for r in runs)})
    for e in out['configs']:
        sd = f" (sd {e['sd_bpb']:.4f})" if e['sd_bpb'] is not None else ''
        print(f"{e['config']}: {e['mean_bpb']:.4f} bits/byte{sd} over {len(e['runs'])} seed(s)")
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__':
    main()
