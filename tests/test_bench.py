"""Smoke tests of the `tnb bench` command: tiny shapes and budgets, one step, valid JSON (timings are not checked)."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
from faults import argv_of

ROOT = Path(__file__).resolve().parent.parent


def tnb_bench(*args, cwd):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(argv_of('tnb', 'bench', *args), capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def small_corpus(path: Path) -> Path:
    words = 'to be or not that is the question whether tis nobler in the mind to suffer slings arrows'.split()
    lines = [' '.join(words[(i * 7 + j) % len(words)] for j in range(8)) for i in range(600)]
    text = '\n\n'.join('\n'.join(lines[i:i + 4]) for i in range(0, len(lines), 4)) + '\n'
    path.write_text(text, encoding='utf-8')
    return path


def test_bench_smoke(tmp_path):
    corpus, out = small_corpus(tmp_path / 'corpus.txt'), tmp_path / 'results.json'
    r = tnb_bench('--shapes', 'baby', '--steps', 1, '--repeats', 1, '--warmup', 1, '--no-compile', '--threads', 1,
                  '--peak-sizes', 128, '--new-tokens', 3, '--prep-mb', 0.01, '--prep-vocab', 300,
                  '--corpus', corpus, '--out', out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # on a CPU there is no datasheet peak: the figure is the fraction of the measured matmul peak, and named so
    for words in ('matmul peak', 'of measured peak', 'tokens/s', 'KV cache', 'encode_batch'): assert words in r.stdout
    assert 'MFU' not in r.stdout
    res = json.loads(out.read_text())
    assert res['schema'] == 'transformer_nb.bench/1'
    assert res['matmul_peak']['fp32']['median'] > 0 and res['machine']['threads'] == 1
    (row,) = res['train']
    assert (row['shape'], row['mode'], row['tokens_per_step']) == ('baby', 'eager', 12 * 64)
    assert row['tokens_per_s']['min'] <= row['tokens_per_s']['median'] <= row['tokens_per_s']['max']
    assert 0 < row['mfu']['median'] and row['final_loss'] == row['final_loss'] and row['peak_source'] == 'measured'
    assert res['generate']['same_tokens'] and res['generate']['kv_cache']['tokens_per_s']['median'] > 0
    assert res['prepare']['prepare_mb_per_s']['median'] > 0 and res['prepare']['encode_batch_mb_per_s']['median'] > 0


def test_quality_smoke(tmp_path):
    corpus, out = small_corpus(tmp_path / 'corpus.txt'), tmp_path / 'quality.json'
    (tmp_path / 'q.yaml').write_text(
        "model: {hidden_size: 32, intermediate_size: 64, num_layers: 1, num_attention_heads: 2,\n"
        "        max_position_embeddings: 32, vocab_size: 300}\n"
        "data: {batch_size: 4, sequence_length: 32}\n"
        "optimizer: {learning_rate: 3.0e-3}\n"
        "scheduler: {strategy: cosine_with_warmup, warmup_steps: 2, total_steps: 100, min_lr: 1.0e-4}\n"
        "runtime: {device: cpu, log_every_n_steps: 2}\n", encoding='utf-8')
    r = tnb_bench('--quality', '--config', tmp_path / 'q.yaml', '--corpus', corpus, '--budget', 1.5, '--threads', 1,
                  '--override', 'optimizer.learning_rate=0.002', '--out', out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res['steps'] >= 1 and res['train_s'] >= 1.5 and 0 < res['val_nats_per_char'] < 10
    assert res['config']['optimizer']['learning_rate'] == 0.002 and res['curve']
    assert res['val_chars'] < res['train_chars'] and 'nats/char' in r.stdout


def test_quality_compare_alternates_two_configs(tmp_path):
    corpus, out = small_corpus(tmp_path / 'corpus.txt'), tmp_path / 'compare.json'
    base = ("model: {hidden_size: 32, intermediate_size: 64, num_layers: 1, num_attention_heads: 2,\n"
            "        max_position_embeddings: 32, vocab_size: 300}\n"
            "data: {batch_size: 4, sequence_length: 32}\n"
            "scheduler: {strategy: cosine_with_warmup, warmup_steps: 2, total_steps: 100, min_lr: 1.0e-4}\n"
            "runtime: {device: cpu, log_every_n_steps: 2}\n")
    (tmp_path / 'a.yaml').write_text(base + "optimizer: {learning_rate: 3.0e-3}\n", encoding='utf-8')
    (tmp_path / 'b.yaml').write_text(base.replace('num_layers: 1', 'num_layers: 1, qk_norm: true, activation: relu2')
                                     + "optimizer: {learning_rate: 3.0e-3, algorithm: muon}\n", encoding='utf-8')
    r = tnb_bench('--quality', '--config', tmp_path / 'a.yaml', '--compare', tmp_path / 'b.yaml', '--rounds', 2,
                  '--corpus', corpus, '--max-steps', 4, '--clock', 'process', '--threads', 1, '--out', out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    a, b = str(tmp_path / 'a.yaml'), str(tmp_path / 'b.yaml')
    assert res['schema'] == 'transformer_nb.bench.quality-compare/1' and res['config_files'] == [a, b]
    assert [(x['name'], x['round']) for x in res['runs']] == [(a, 1), (b, 1), (a, 2), (b, 2)]   # alternated
    assert res['runs'][1]['config']['optimizer']['algorithm'] == 'muon' and res['runs'][1]['config']['model']['qk_norm']
    means = {k: v['mean'] for k, v in res['summary'].items()}
    assert abs(res['difference'] - (means[b] - means[a])) < 1e-12
    assert 'difference (second - first)' in r.stdout
    r = tnb_bench('--quality', '--config', tmp_path / 'a.yaml', '--compare', tmp_path / 'nope.yaml', '--corpus', corpus,
                  '--out', out, cwd=tmp_path)
    assert r.returncode == 2 and 'nope.yaml' in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_shipped_quality_config_loads():
    from transformer_nb.config import load_config
    cfg = load_config(ROOT / 'configs' / 'shakespeare_cpu.yaml')
    assert cfg.model.vocab_size and cfg.scheduler.total_steps
    recipe = load_config(ROOT / 'configs' / 'shakespeare_cpu_recipe.yaml')
    assert recipe.optimizer.algorithm == 'muon' and recipe.model.qk_norm and recipe.model.hidden_size == cfg.model.hidden_size


def test_user_errors(tmp_path):
    r = tnb_bench('--shapes', 'huge', '--only', 'train', '--out', tmp_path / 'x.json', cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --shapes: unknown shape 'huge' (choose from baby, local, m3_medium, gpt2_124m)"]


def test_quality_user_errors(tmp_path):
    r = tnb_bench('--quality', '--corpus', tmp_path / 'missing.txt', '--out', tmp_path / 'x.json', cwd=tmp_path)
    assert r.returncode == 2 and 'missing.txt' in r.stderr and len(r.stderr.strip().splitlines()) == 1


TINY = ("model: {hidden_size: 32, intermediate_size: 64, num_layers: 1, num_attention_heads: 2,\n"
        "        max_position_embeddings: 32, vocab_size: 300}\n"
        "data: {batch_size: 4, sequence_length: 32}\n"
        "optimizer: {learning_rate: 3.0e-3}\n"
        "scheduler: {strategy: cosine_with_warmup, warmup_steps: 2, total_steps: 100, min_lr: 1.0e-4}\n"
        "runtime: {device: cpu, log_every_n_steps: 2}\n")


def test_quality_library(tmp_path):
    "quality_run and quality_compare (transformer_nb.quality) on the Trainer's step, without the command line."
    from transformer_nb.config import load_config
    from transformer_nb.bench import BenchError
    from transformer_nb.quality import quality_compare, quality_run
    corpus = small_corpus(tmp_path / 'corpus.txt')
    (tmp_path / 'q.yaml').write_text(TINY, encoding='utf-8')
    cfg = load_config(tmp_path / 'q.yaml')
    res = quality_run(cfg, corpus, 60.0, max_steps=6, clock='process', show_progress=False)
    assert res['steps'] == 6 and 0 < res['val_nats_per_char'] < 10 and res['val_chars'] < res['train_chars']
    assert [c['step'] for c in res['curve']] == [2, 4, 6] and res['tokens_seen'] == 6 * 4 * 32
    lrs = [c['lr'] for c in res['curve']]
    assert lrs[0] > lrs[-1] > 0                     # the cosine schedule, fixed to max_steps, decays
    cmp = quality_compare({'a': cfg, 'b': cfg}, corpus, 60.0, rounds=1, max_steps=2, clock='process', show_progress=False)
    assert [r['name'] for r in cmp['runs']] == ['a', 'b'] and abs(cmp['difference']) < 1e-6   # same seed, same figure
    try: quality_run(cfg, tmp_path / 'missing.txt', 1.0, show_progress=False)
    except BenchError as e: assert 'missing.txt' in str(e)
    else: raise AssertionError('a missing corpus must be a BenchError')
