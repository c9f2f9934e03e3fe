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
    "One config over two seeds, by a CPU-seconds budget: the JSON keys outside tools read."
    corpus, out = small_corpus(tmp_path / 'corpus.txt'), tmp_path / 'quality.json'
    (tmp_path / 'q.yaml').write_text(TINY, encoding='utf-8')
    r = tnb_bench('--quality', '--config', tmp_path / 'q.yaml', '--corpus', corpus, '--budget', 1.5, '--seeds', 2,
                  '--override', 'optimizer.learning_rate=0.002', '--json', out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res['corpus'] == str(corpus) and res['threads'] == 1 and res['budget'] == {'seconds': 1.5, 'clock': 'process'}
    (entry,) = res['configs']
    assert entry['config'] == 'q.yaml' and [r['seed'] for r in entry['runs']] == [1, 2]
    for run in entry['runs']:
        assert run['steps'] >= 1 and run['tokens'] == run['steps'] * 4 * 32 and 0 < run['bpb'] < 10
        assert run['detail']['train_s'] >= 1.5 and run['detail']['config']['optimizer']['learning_rate'] == 0.002
        assert 0 < run['nats_per_char'] < 10 and run['detail']['val_chars'] < run['detail']['train_chars']
    bpb = [r['bpb'] for r in entry['runs']]
    assert abs(entry['mean_bpb'] - sum(bpb) / 2) < 1e-12 and abs(entry['sd_bpb'] - abs(bpb[0] - bpb[1]) / 2 ** 0.5) < 1e-9
    assert 'difference_bpb' not in res and 'mean bpb' in r.stdout


def test_quality_compare_alternates_two_configs(tmp_path):
    "Two configs by a token budget, seed by seed: exact step counts, the difference and its standard error."
    corpus, out = small_corpus(tmp_path / 'corpus.txt'), tmp_path / 'compare.json'
    base = TINY.replace("optimizer: {learning_rate: 3.0e-3}\n", '')
    (tmp_path / 'a.yaml').write_text(base + "optimizer: {learning_rate: 3.0e-3}\n", encoding='utf-8')
    (tmp_path / 'b.yaml').write_text(base.replace('num_layers: 1', 'num_layers: 1, qk_norm: true, activation: relu2')
                                     + "optimizer: {learning_rate: 3.0e-3, algorithm: muon}\n", encoding='utf-8')
    r = tnb_bench('--quality', '--config', tmp_path / 'a.yaml', '--compare', tmp_path / 'b.yaml', '--seeds', 2,
                  '--corpus', corpus, '--tokens', 4 * 4 * 32, '--json', out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    a, b = res['configs']
    assert (a['config'], b['config']) == ('a.yaml', 'b.yaml')     # named relative to the current folder
    assert res['schema'] == 'transformer_nb.bench.quality/2' and res['seeds'] == [1, 2] and res['budget'] == {'tokens': 512}
    assert [r['steps'] for r in a['runs'] + b['runs']] == [4] * 4
    assert b['runs'][0]['detail']['config']['optimizer']['algorithm'] == 'muon'
    assert abs(res['difference_bpb'] - (b['mean_bpb'] - a['mean_bpb'])) < 1e-12
    assert abs(res['se_bpb'] - (a['sd_bpb'] ** 2 / 2 + b['sd_bpb'] ** 2 / 2) ** 0.5) < 1e-12
    assert 'standard error' in r.stdout
    r = tnb_bench('--quality', '--config', tmp_path / 'a.yaml', '--compare', tmp_path / 'nope.yaml', '--corpus', corpus,
                  '--out', out, cwd=tmp_path)
    assert r.returncode == 2 and 'nope.yaml' in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_quality_tuning_split_never_touches_the_held_out_part(tmp_path):
    "--tune trains and scores inside the training part; the final split holds out whole articles."
    from transformer_nb.quality import split_paragraphs, split_text
    text = small_corpus(tmp_path / 'corpus.txt').read_text()
    train, held = split_text(text, 0.1)
    tune_train, tune_held = split_text(train, 1 / 9)
    assert train + held == text and tune_train + tune_held == train and abs(len(tune_held) - len(held)) < 200
    paras = '\n\n'.join(f'Article {i}, line one.\nLine two.' for i in range(100)) + '\n'
    train, held = split_paragraphs(paras, 10)
    tune_train, tune_held = split_paragraphs(train, 9)
    held_set, tune_set = set(held.split('\n\n')), set(tune_held.split('\n\n'))
    assert len(held_set) == 10 and len(tune_set) == 10 and not held_set & tune_set
    assert not held_set & set(tune_train.split('\n\n')) and all('Line two.' in a for a in held_set)


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
    res = quality_run(cfg, corpus, tokens=6 * 4 * 32, show_progress=False)
    assert res['steps'] == 6 and 0 < res['nats_per_char'] < 10 and res['val_chars'] < res['train_chars']
    assert [c['step'] for c in res['curve']] == [2, 4, 6] and res['tokens'] == 6 * 4 * 32
    lrs = [c['lr'] for c in res['curve']]
    assert lrs[0] > lrs[-1] > 0                     # the cosine schedule, fixed to the token budget, decays
    cmp = quality_compare({'a': cfg, 'b': cfg}, corpus, seeds=1, tokens=2 * 4 * 32, show_progress=False)
    assert [e['config'] for e in cmp['configs']] == ['a', 'b'] and abs(cmp['difference_bpb']) < 1e-6   # same seed
    assert cmp['se_bpb'] is None                    # one seed: no error bar
    try: quality_run(cfg, tmp_path / 'missing.txt', 1.0, show_progress=False)
    except BenchError as e: assert 'missing.txt' in str(e)
    else: raise AssertionError('a missing corpus must be a BenchError')


def test_time_budget_schedule_is_a_function_of_the_budget():
    "budget_lr: warm-up by steps, then the decay by the fraction of the budget spent, whatever the step count."
    from transformer_nb.config import SchedulerConfig
    from transformer_nb.quality import budget_lr
    s = SchedulerConfig(strategy='cosine_with_warmup', warmup_steps=4, min_lr=0.0)
    assert [budget_lr(i, 0.0, s, 1.0) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert budget_lr(10, 0.5, s, 1.0) == budget_lr(1000, 0.5, s, 1.0) and abs(budget_lr(10, 0.5, s, 1.0) - 0.5) < 1e-5
    assert budget_lr(10, 1.0, s, 1.0) == 0.0


def test_quality_alone_compares_the_default_config_with_the_recipe(tmp_path):
    "`tnb bench --quality` without --config: the default config against the recipe, one thread, process clock."
    corpus, out = small_corpus(tmp_path / 'corpus.txt'), tmp_path / 'headline.json'
    r = tnb_bench('--quality', '--corpus', corpus, '--tokens', 2 * 2048, '--seeds', 1, '--json', out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [Path(e['config']).name for e in res['configs']] == ['shakespeare_cpu.yaml', 'shakespeare_cpu_recipe.yaml']
    assert res['threads'] == 1 and res['se_bpb'] is None and 'difference_bpb' in res
    assert res['configs'][1]['runs'][0]['detail']['config']['optimizer']['algorithm'] == 'muon'
