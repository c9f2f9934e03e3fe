"""Corpus readers and the prepare pipeline on real pretraining formats (issue 12), and the one text
normalisation shared by the tokenizer and prepare (issue 19, item 3).

- every kind of source (text, JSON Lines, Parquet, each plain and .gz/.bz2/.xz/.zst, folders with
  a skipped-files summary and --glob, hf: local dataset folders) gives the same documents;
- reading can stop after any document and resume at (source, record + 1) with the same rest;
- bad input is one line naming the place (file:line, the fields present, the columns, the
  compressed byte offset, an unreachable hf: name), exit status 2 from a command, no cache left;
- prepare: byte-identical shards for 1, 2 and 3 workers; bounded shard files; a SIGKILLed
  prepare (and its workers) resumes and ends byte-identical to an uninterrupted run; duplicate documents
  counted and dropped with --dedupe;
- a CRLF + byte-order-mark corpus trains the same tokenizer and gives the same shards as its
  LF twin (fails without the shared normalisation: the tokenizer learns '\\r' merges).
"""
import bz2
import gzip
import json
import lzma
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from transformer_nb.base import UserError
from transformer_nb.data import prepare
from transformer_nb.sources import (CorpusError, iter_corpus, iter_documents, normalize_text, resolve_corpus,
                                    validate_corpus)
from transformer_nb.tokenizer import train_bbpe

BIN = Path(sys.executable).parent
PACK = {'': lambda b: b, '.gz': gzip.compress, '.bz2': bz2.compress, '.xz': lzma.compress,
        '.zst': zstandard.ZstdCompressor(write_checksum=True).compress}
WORDS = 'the king queen speaks and all listen now to me é 😀 fair sweet night day'.split()


def make_docs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return [' '.join(rng.choice(WORDS, size=rng.integers(3, 30))) + '\n' for _ in range(n)]


def write_all_kinds(d: Path, docs) -> dict:
    "The same documents as a text file, JSON Lines and Parquet, each plain and compressed four ways."
    d.mkdir(parents=True, exist_ok=True)
    text = '\n'.join(docs).encode()
    jsonl = ''.join(json.dumps({'id': i, 'meta': {'body': t}}) + '\n' for i, t in enumerate(docs)).encode()
    pq.write_table(pa.table({'meta': [{'body': t} for t in docs]}), d/'base.parquet', row_group_size=64)
    pqb = (d/'base.parquet').read_bytes()
    out = {}
    for ext, pack in PACK.items():
        for name, blob in (('c.txt', text), ('c.jsonl', jsonl), ('c.parquet', pqb)):
            p = d/f'{name}{ext}'
            p.write_bytes(pack(blob))
            out[p.name] = p
    return out


@pytest.fixture(scope='module')
def kinds(tmp_path_factory):
    d = tmp_path_factory.mktemp('kinds')
    docs = make_docs()
    return docs, write_all_kinds(d, docs)


def test_every_kind_gives_the_same_documents(kinds):
    docs, files = kinds
    for name, p in files.items():
        assert list(iter_documents(p, text_field='meta.body')) == docs, name


def test_resume_after_any_document(kinds):
    docs, files = kinds
    corpus = resolve_corpus([files['c.jsonl.gz'], files['c.parquet'], files['c.txt.zst']], text_field='meta.body')
    every = list(iter_corpus(corpus))
    assert len(every) == 3 * len(docs)
    for k in [0, 1, 63, 64, 65, 299, 300, 301, 500, 899]:
        (s, r), _ = every[k]
        assert list(iter_corpus(corpus, start=(s, r + 1))) == every[k + 1:]


def test_folder_skips_are_counted_and_glob_chooses(tmp_path):
    d = tmp_path/'doc'
    (d/'pkg'/'.hidden').mkdir(parents=True)
    for name in ('copyright', 'changelog.Debian.gz', 'README.md', 'notes.txt', 'logo.png', 'pkg/guide.rst',
                 'pkg/data.jsonl', 'pkg/.hidden/x.txt'):
        data = b'{"text": "x"}\n' if name.endswith('jsonl') else b'some text\n'
        (d/name).write_bytes(gzip.compress(data) if name.endswith('.gz') else data)
    c = resolve_corpus(d)
    assert [s.path.relative_to(d).as_posix() for s in c] == ['README.md', 'notes.txt', 'pkg/data.jsonl', 'pkg/guide.rst']
    assert c.skipped == {'': 1, '.gz': 1, '.png': 1, 'hidden': 1}
    assert 'skipped 1 file without an extension' in c.skipped_line and '1 .png' in c.skipped_line
    g = resolve_corpus(d, glob='changelog*')
    assert [(s.path.name, s.kind, s.compression) for s in g] == [('changelog.Debian.gz', 'text', 'gzip')]
    assert list(iter_documents(g)) == ['some text\n']
    (tmp_path/'g').mkdir(); (tmp_path/'g'/'a.txt').write_text('a\n'); (tmp_path/'g'/'b.txt').write_text('b\n')
    with pytest.raises(CorpusError, match=r"g: directory contains no files matching --glob '\*.csv'; skipped 2 \.txt"):
        resolve_corpus(tmp_path/'g', glob='*.csv')


@pytest.mark.parametrize('name,content,expected', [
    ('a.jsonl', '{"text": "ok"}\n\n{"text": "broken}\n', r'a\.jsonl:3: invalid JSON: Unterminated string'),
    ('b.jsonl', '{"text": "ok"}\n{"body": "x", "id": 2}\n', r"b\.jsonl:2: no field 'text' \(fields present: body, id\)"),
    ('c.jsonl', '{"text": ["a", "list"]}\n', r"c\.jsonl:1: field 'text' is an array, not a string"),
    ('d.json', '[{"text": "a"}]\n', r"d\.json:1: a record must be a JSON object, this is an array \(a JSON array, not JSON Lines"),
])
def test_record_errors_name_the_line(tmp_path, name, content, expected):
    (tmp_path/name).write_text(content)
    with pytest.raises(CorpusError, match=expected) as e:
        validate_corpus(tmp_path/name)
    assert isinstance(e.value, UserError) and '\n' not in str(e.value)


def test_parquet_errors_list_the_columns(tmp_path):
    pq.write_table(pa.table({'id': [1], 'content': ['x'], 'n': [2]}), tmp_path/'t.parquet')
    with pytest.raises(CorpusError, match=r"t\.parquet: no column 'text' \(columns: id, content, n\)"):
        validate_corpus(tmp_path/'t.parquet')
    with pytest.raises(CorpusError, match=r"t\.parquet: column 'n' has type int64, not string"):
        validate_corpus(tmp_path/'t.parquet', text_field='n')
    (tmp_path/'u.parquet').write_bytes(b'PAR1 but not really')
    with pytest.raises(CorpusError, match=r'u\.parquet: not a readable Parquet file'):
        validate_corpus(tmp_path/'u.parquet')


@pytest.mark.parametrize('ext', ['.gz', '.bz2', '.xz', '.zst'])
def test_damaged_compressed_files(tmp_path, ext):
    blob = PACK[ext](''.join(f'line {i} of a file that compresses well\n' for i in range(30_000)).encode())
    (tmp_path/f'cut.txt{ext}').write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CorpusError, match=rf'cut\.txt{ext}: truncated \w+ file: the compressed data stops at byte offset '
                                          rf'{len(blob) // 2:,}'):
        validate_corpus(tmp_path/f'cut.txt{ext}')
    bad = bytearray(blob); bad[len(blob) // 2] ^= 0x55
    (tmp_path/f'bad.txt{ext}').write_bytes(bytes(bad))
    with pytest.raises(CorpusError, match=rf'bad\.txt{ext}: (corrupt \w+ data, found in compressed bytes [\d,]+\.\.[\d,]+|not valid UTF-8|binary)'):
        validate_corpus(tmp_path/f'bad.txt{ext}')


def test_hf_local_folder_same_as_parquet(tmp_path, kinds):
    docs, files = kinds
    (tmp_path/'ds'/'data').mkdir(parents=True)
    (tmp_path/'ds'/'data'/'train-00000-of-00001.parquet').write_bytes(files['c.parquet'].read_bytes())
    assert list(iter_documents(f'hf:{tmp_path}/ds?column=meta.body')) == docs
    assert list(iter_documents(f'hf:{tmp_path}/ds', text_field='meta.body')) == docs
    with pytest.raises(CorpusError, match=r"hf:.*ds: row 0: no field 'text' \(fields present: meta\)"):
        validate_corpus(f'hf:{tmp_path}/ds')


def test_normalize_text():
    assert normalize_text('\ufeffa\r\nb\r\n\rc') == 'a\nb\n\rc'


# ----------------------------------------------------------------------------------------------
# commands: one line, exit 2

def run(cmd, *args, env=None, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    return subprocess.run([sys.executable, '-m', 'transformer_nb', cmd, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_user_error(r, culprit):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert lines[-1].startswith('error: ') and culprit in lines[-1], lines[-3:]


def test_commands_refuse_bad_input(tmp_path):
    (tmp_path/'bad.jsonl').write_text('{"text": "a"}\n{"txt": "b"}\n')
    assert_user_error(run('validate-corpus', tmp_path/'bad.jsonl', '--text-field', 'text'), "bad.jsonl:2: no field 'text' (fields present: txt)")
    r = run('validate-corpus', 'hf:nobody/no-such-dataset-xyz', env={'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'})
    assert_user_error(r, "hf:nobody/no-such-dataset-xyz: cannot load Hugging Face dataset")
    assert 'give hf:DIR' in r.stderr
    (tmp_path/'empty').mkdir(); (tmp_path/'empty'/'a.png').write_bytes(b'\x89PNG')
    assert_user_error(run('validate-corpus', tmp_path/'empty'), 'directory contains no corpus files')


# ----------------------------------------------------------------------------------------------
# prepare: workers, shards, resume, dedupe, CRLF + BOM

@pytest.fixture(scope='module')
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp('tok')
    (d/'corpus.txt').write_text('\n'.join(make_docs(400, seed=1)))
    train_bbpe([d/'corpus.txt'], d/'tok', vocab_size=300, show_progress=False)
    return d/'tok'


def shard_hashes(d):
    return [(s['file'], s['sha256']) for split in ('train', 'val') for s in d.manifest[split]['shards']]


def test_workers_give_byte_identical_shards(tmp_path, kinds, tok):
    docs, files = kinds
    src = [files['c.jsonl.gz'], files['c.parquet']]
    runs = [prepare(src, tok, tmp_path/f'w{n}', workers=n, batch_chars=2_000, shard_tokens=3_000, text_field='meta.body',
                    show_progress=False, verbose=False) for n in (1, 2, 3)]
    assert [r.manifest['stats']['workers'] for r in runs] == [1, 2, 3]
    assert shard_hashes(runs[0]) == shard_hashes(runs[1]) == shard_hashes(runs[2])
    shards = runs[0].manifest['train']['shards']
    assert len(shards) > 3 and all(s['tokens'] <= 3_000 for s in shards) and runs[0].manifest['dtype'] == 'uint16'
    assert runs[0].manifest['duplicates'] == {'documents': 2 * len(docs) - len(set(docs)), 'dropped': 0}


def test_dedupe_counts_and_drops(tmp_path, tok):
    (tmp_path/'in').mkdir()
    (tmp_path/'in'/'a.txt').write_text('one two three\n\nfour five\n\none two three\n\nsix\n\nseven eight\n')
    (tmp_path/'in'/'b.jsonl').write_text('{"text": "four five\\n"}\n{"text": "nine"}\n')
    kept = prepare(tmp_path/'in', tok, tmp_path/'c', show_progress=False, verbose=False)
    dropped = prepare(tmp_path/'in', tok, tmp_path/'c', dedupe=True, show_progress=False, verbose=False)
    assert kept.dir != dropped.dir
    assert kept.manifest['duplicates'] == {'documents': 2, 'dropped': 0}
    assert dropped.manifest['duplicates'] == {'documents': 2, 'dropped': 2}
    n = lambda d: d.train.num_documents + d.val.num_documents
    assert (n(kept), n(dropped)) == (7, 5)


PREPARE = ("import sys; from transformer_nb.data import prepare; "
           "prepare(sys.argv[1], sys.argv[2], sys.argv[3], workers=2, batch_chars=20_000, shard_tokens=4_000, show_progress=False)")


def test_killed_prepare_resumes_byte_identical(tmp_path, tok):
    (tmp_path/'in').mkdir()
    with gzip.open(tmp_path/'in'/'big.jsonl.gz', 'wt') as f:
        for t in make_docs(12_000, seed=3): f.write(json.dumps({'text': t}) + '\n')
    job = lambda out: [sys.executable, '-c', PREPARE, str(tmp_path/'in'), str(tok), str(tmp_path/out)]
    whole = subprocess.run(job('whole'), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    p = subprocess.Popen(job('cut'), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and not list((tmp_path/'cut').glob('.partial-*/journal.json')):
        time.sleep(0.02)
    assert p.poll() is None, 'prepare finished before it could be killed'
    os.killpg(p.pid, signal.SIGKILL); p.wait()                  # the process and its workers, mid-run
    assert not list((tmp_path/'cut').glob('tokens-*'))
    again = subprocess.run(job('cut'), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and 'resuming the interrupted prepare' in again.stderr, again.stderr
    (a,), (b,) = (list((tmp_path/x).glob('tokens-*')) for x in ('whole', 'cut'))
    ma, mb = (json.loads((d/'manifest.json').read_text()) for d in (a, b))
    assert len(ma['train']['shards']) > 10
    assert [s['sha256'] for s in ma['train']['shards'] + ma['val']['shards']] == \
           [s['sha256'] for s in mb['train']['shards'] + mb['val']['shards']]
    assert sorted(p.name for p in (tmp_path/'cut').iterdir()) == sorted(['.prepare.lock', b.name])   # the lock file stays (filelock)


def test_crlf_bom_corpus_same_tokenizer_and_shards(tmp_path):
    "Fails without the one normalisation: trained on CRLF, the tokenizer learns merges with '\\r' (byte-level 'č')."
    docs = make_docs(300, seed=5)
    lf = '\n'.join(docs)
    (tmp_path/'lf.txt').write_bytes(lf.encode())
    (tmp_path/'crlf.txt').write_bytes(('\ufeff' + lf.replace('\n', '\r\n')).encode())
    with gzip.open(tmp_path/'crlf.jsonl.gz', 'wt') as f:       # records carry CRLF and a BOM too
        for d in docs: f.write(json.dumps({'text': '\ufeff' + d.replace('\n', '\r\n')}) + '\n')
    toks = {n: train_bbpe([tmp_path/f'{n}.txt'], tmp_path/f'tok_{n}', vocab_size=320, show_progress=False) for n in ('lf', 'crlf')}
    model = {n: json.loads((tmp_path/f'tok_{n}'/'tokenizer.json').read_text())['model'] for n in toks}
    assert model['crlf']['merges'] == model['lf']['merges'] and model['crlf']['vocab'] == model['lf']['vocab']
    assert not any('č' in t or 'ï»¿' in t for t in model['crlf']['vocab'] if len(t) > 1)
    shas = lambda d: [s['sha256'] for s in d.manifest['train']['shards'] + d.manifest['val']['shards']]
    runs = {n: prepare(tmp_path/n, tmp_path/'tok_lf', tmp_path/f'd_{n}', show_progress=False, verbose=False)
            for n in ('lf.txt', 'crlf.txt', 'crlf.jsonl.gz')}
    assert shas(runs['crlf.txt']) == shas(runs['lf.txt']) == shas(runs['crlf.jsonl.gz'])


def test_orchestrate_reads_a_jsonl_dump_with_text_field(tmp_path):
    (tmp_path/'dump').mkdir(); (tmp_path/'dump'/'logo.png').write_bytes(b'\x89PNG')
    with gzip.open(tmp_path/'dump'/'part-0.jsonl.gz', 'wt') as f:
        for i, t in enumerate(make_docs(300, seed=7)): f.write(json.dumps({'id': i, 'body': {'text': t}}) + '\n')
    r = run('orchestrate', '--profile', 'local', '--input', tmp_path/'dump', '--text-field', 'body.text',
            '--run-dir', tmp_path/'run', '--max-steps', '2', '--vocab-size', '300', '--no-progress', '--prompt', 'the king',
            '--sample-tokens', '4', '--override', 'model.hidden_size=32', 'model.intermediate_size=64', 'model.num_layers=1',
            'model.max_position_embeddings=64', 'data.sequence_length=64', 'data.batch_size=4',
            'runtime.evaluation.max_batches=1', 'runtime.device=cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'skipped 1 .png' in r.stdout + r.stderr
    assert 'text_field: body.text' in (tmp_path/'run'/'training.yaml').read_text()
    assert (tmp_path/'run'/'samples.txt').is_file()
