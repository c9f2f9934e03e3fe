"""Training throughput from prepared token shards vs. streaming (`data.streaming: true`), same model.

Alternates the two in one process, `--rounds` times, and prints tokens/s of `Trainer.fit()` for each (the
time to prepare the shards is NOT counted for the shards run: this measures the cost of reading, tokenizing
and packing during training). Example:

    .venv/bin/python tools/bench_streaming.py --steps 40 --rounds 3
"""
import argparse
import contextlib
import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from transformer_nb.config import config_from_dict
from transformer_nb.tokenizer import train_bbpe
from transformer_nb.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def config(tmp: Path, streaming: bool, steps: int, run: str) -> dict:
    return config_from_dict({
        'model': {'hidden_size': 128, 'intermediate_size': 512, 'num_layers': 4, 'num_attention_heads': 4,
                  'max_position_embeddings': 128},
        'tokenizer': {'tokenizer_json': str(tmp / 'tok' / 'tokenizer.json')},
        'data': {'train_shards': [str(tmp / 'train.txt')], 'validation_shards': [str(tmp / 'val.txt')],
                 'batch_size': 16, 'streaming': streaming, 'cache_dir': str(tmp / 'cache')},
        'optimizer': {'learning_rate': 1e-3},
        'scheduler': {'strategy': 'constant', 'total_steps': steps},
        'runtime': {'seed': 0, 'log_every_n_steps': 1000, 'device': 'cpu',
                    'checkpoint': {'directory': str(tmp / run / 'checkpoints'), 'every_n_steps': None},
                    'evaluation': {'every_n_steps': None, 'max_batches': 1}, 'logging': {'tensorboard': None}}})


def timed_fit(cfg) -> float:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        t = Trainer(cfg, show_progress=False)
        t.evaluate = lambda *a, **k: {'loss': float('nan')}          # time the training steps only
        t._evaluate_and_track = lambda: None
        t0 = time.perf_counter(); t.fit(); dt = time.perf_counter() - t0
    return t.tokens_per_step * t.step / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=40)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        from transformer_nb.sources import tiny_shakespeare
        text = tiny_shakespeare().read_text(encoding='utf-8')
        (tmp / 'train.txt').write_text(text[:1_000_000], encoding='utf-8')
        (tmp / 'val.txt').write_text(text[1_000_000:], encoding='utf-8')
        train_bbpe([tmp / 'train.txt'], tmp / 'tok', vocab_size=2048, show_progress=False)
        timed_fit(config(tmp, False, 2, 'warm'))         # prepares the shards (not timed) and warms up
        res = {'shards': [], 'streaming': []}
        for r in range(a.rounds):
            for name in ('shards', 'streaming'):
                res[name].append(timed_fit(config(tmp, name == 'streaming', a.steps, f'{name}{r}')))
                print(f'round {r + 1} {name:>9}: {res[name][-1]:,.0f} tokens/s', flush=True)
        s, m = statistics.median(res['streaming']), statistics.median(res['shards'])
        print(f'median tokens/s: shards {m:,.0f}, streaming {s:,.0f}; streaming / shards = {s / m:.3f}')


if __name__ == '__main__':
    main()
