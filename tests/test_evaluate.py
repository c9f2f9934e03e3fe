"""The `tnb evaluate` command, run as a user runs it (the console script in a separate process): loss, perplexity,
bits per byte and nats per character of a checkpoint on any text; the figures agree with a computation by hand;
user errors exit 2 with one line naming the culprit."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from faults import argv_of
from transformer_nb.checkpoint import save_checkpoint
from transformer_nb.config import config_from_dict
from transformer_nb.model import DecoderModel
from transformer_nb.tokenizer import build_from_artifacts, eos_id, train_bbpe

TEXT = ("Ô Roméo, Roméo! pourquoi es-tu Roméo?\nRenie ton père et abdique ton nom.\n\n"
        "Wherefore art thou Romeo? Deny thy father and refuse thy name.\n") * 20


def run(*args):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    return subprocess.run(argv_of('tnb', 'evaluate', *args), capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp('evaluate')
    (d / 'text.txt').write_text(TEXT, encoding='utf-8')
    train_bbpe([d / 'text.txt'], d / 'tok', vocab_size=300, show_progress=False)
    cfg = config_from_dict({'model': {'hidden_size': 32, 'intermediate_size': 64, 'num_layers': 1, 'num_attention_heads': 2,
                                      'max_position_embeddings': 32, 'qk_norm': True},
                            'tokenizer': {'tokenizer_json': str(d / 'tok' / 'tokenizer.json')}})
    torch.manual_seed(0)
    model = DecoderModel(cfg.model, 300)
    path = save_checkpoint(d / 'run' / 'checkpoints', 5, model, None, {}, cfg, tokenizer_dir=d / 'tok')
    return d, path, model


def test_figures_match_a_computation_by_hand(ckpt):
    d, path, model = ckpt
    r = run('--checkpoint', path, '--input', d / 'text.txt', '--json', d / 'm.json', '--no-progress')
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith('loss ') and 'perplexity' in line and 'bpb' in line and 'nats/char' in line
    m = json.loads((d / 'm.json').read_text())
    # by hand: the two documents (blank-line separated), each + EOS, one stream after an EOS, windows of 32
    tok = build_from_artifacts(d / 'tok')
    docs = [p.strip('\n') + '\n' for p in TEXT.split('\n\n') if p.strip()]     # as iter_documents: ending in a newline
    eos = eos_id(tok)
    ids = [eos] + [t for doc in docs for t in tok.encode(doc, add_special_tokens=False).ids + [eos]]
    x = torch.tensor(ids)
    nats = 0.0
    with torch.no_grad():
        for s in range(0, len(x) - 1, 32):
            inp, tgt = x[s:s + 32][: len(x) - 1 - s], x[s + 1:s + 33]
            nats += float(F.cross_entropy(model(inp[None])[0], tgt, reduction='sum'))
    # the documents' text and one newline per EOS (the blank line after each document in a file)
    n_bytes, n_chars = sum(len(doc.encode('utf-8')) + 1 for doc in docs), sum(len(doc) + 1 for doc in docs)
    assert m['tokens'] == len(ids) - 1 and m['bytes'] == n_bytes and m['chars'] == n_chars
    assert abs(m['loss'] - nats / m['tokens']) < 1e-4
    assert abs(m['bpb'] - nats / math.log(2) / n_bytes) < 1e-4
    assert abs(m['nats_per_char'] - nats / n_chars) < 1e-4
    assert n_bytes > n_chars                                     # accented letters: bytes and characters differ
    assert f"bpb {m['bpb']:.4f}" in line


def test_run_dir_and_max_tokens(ckpt):
    d, path, _ = ckpt
    r = run('--run-dir', d / 'run', '--input', d / 'text.txt', '--max-tokens', '50', '--json', d / 'm50.json')
    assert r.returncode == 0, r.stderr
    assert json.loads((d / 'm50.json').read_text())['tokens'] == 50
    assert 'evaluate' in r.stderr                               # progress bar and loading details go to stderr


@pytest.mark.parametrize('args,culprit', [(['--input', 'MISSING.txt'], 'MISSING.txt'),
                                          (['--max-tokens', '0'], '--max-tokens')], ids=['input', 'max-tokens'])
def test_user_errors(ckpt, args, culprit):
    d, path, _ = ckpt
    a = ['--checkpoint', path, '--input', d / 'text.txt', *args] if args[0] != '--input' else ['--checkpoint', path, *[
        d / a if a.endswith('.txt') else a for a in args]]
    r = run(*a)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: ') and culprit in lines[0], r.stderr


def test_missing_checkpoint_and_binary_input(ckpt, tmp_path):
    d, path, _ = ckpt
    r = run('--checkpoint', tmp_path / 'nope', '--input', d / 'text.txt')
    assert r.returncode == 2 and 'nope' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / 'bin.txt').write_bytes(b'abc\x00def\n')
    r = run('--checkpoint', path, '--input', tmp_path / 'bin.txt')
    assert r.returncode == 2 and 'bin.txt' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_several_inputs(ckpt, tmp_path):
    "--input takes several paths, after one flag or repeated (a second --input adds to the first; a file named twice is read once)."
    d, path, _ = ckpt
    (tmp_path / 'other.txt').write_text(TEXT[: len(TEXT) // 2], encoding='utf-8')
    figures = {}
    for name, inputs in {'one': ['--input', d / 'text.txt'],
                         'repeated': ['--input', d / 'text.txt', '--input', tmp_path / 'other.txt'],
                         'after one flag': ['--input', d / 'text.txt', tmp_path / 'other.txt'],
                         'twice': ['--input', d / 'text.txt', '--input', d / 'text.txt']}.items():
        r = run('--checkpoint', path, *inputs, '--no-progress', '--json', tmp_path / f'{name}.json')
        assert r.returncode == 0, r.stderr
        figures[name] = json.loads((tmp_path / f'{name}.json').read_text())
    assert figures['repeated']['inputs'] == [str(d / 'text.txt'), str(tmp_path / 'other.txt')]
    assert figures['repeated']['tokens'] == figures['after one flag']['tokens'] > figures['one']['tokens']
    assert figures['repeated']['chars'] > figures['one']['chars']
    assert (figures['twice']['tokens'], figures['twice']['inputs']) == (figures['one']['tokens'], [str(d / 'text.txt')])


def test_hf_dataset_input(ckpt, tmp_path):
    "An `hf:` source (a local dataset folder: Parquet under data/, as `datasets` writes it) gives the figures of its text."
    pa, pq = pytest.importorskip('pyarrow'), pytest.importorskip('pyarrow.parquet')
    pytest.importorskip('datasets')
    d, path, _ = ckpt
    docs = [p.strip('\n') + '\n' for p in TEXT.split('\n\n') if p.strip()]
    (tmp_path / 'ds' / 'data').mkdir(parents=True)
    pq.write_table(pa.table({'text': docs}), tmp_path / 'ds' / 'data' / 'train-00000-of-00001.parquet')
    r = run('--checkpoint', path, '--input', f'hf:{tmp_path / "ds"}', '--no-progress', '--json', tmp_path / 'hf.json')
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / 'hf.json').read_text())
    r = run('--checkpoint', path, '--input', d / 'text.txt', '--no-progress', '--json', tmp_path / 'txt.json')
    t = json.loads((tmp_path / 'txt.json').read_text())
    assert m['inputs'] == [f'hf:{tmp_path / "ds"}'] and (m['tokens'], m['chars']) == (t['tokens'], t['chars'])
    assert abs(m['loss'] - t['loss']) < 1e-6
