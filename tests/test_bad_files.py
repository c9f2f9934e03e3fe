"""Messy folders, decompression bombs and null texts.

- bad files: a file named explicitly that cannot be read as corpus text is an error; one found by a folder
  walk or a glob (binary, not UTF-8, not JSON Lines, a cut archive) is skipped and reported (a count per
  reason, the first names) by validate_corpus, `tnb validate-corpus` (every problem, one line each, then
  "... and N more"), `tnb train-tokenizer`, prepare (its manifest) and orchestrate's corpus stage;
  strict mode turns them into errors and leaves nothing half-written; a file bad only after 3 MB leaves no
  document of it behind;
- decompression: a 177-byte .bz2 of 200 MiB of 'a' on one line is read with bounded memory, in pieces no
  longer than the bound; a one-byte read of every compressed kind stays small;
- null texts (JSON null, Parquet null) are counted and skipped like empty ones, not fatal.
"""
import bz2
import gzip
import json
import lzma
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from transformer_nb.data import prepare
from transformer_nb.sources import (CorpusError, iter_documents, open_binary, validate_corpus)
from transformer_nb.tokenizer import train_bbpe

GOOD = ''.join(f'Document {i} speaks of ships and sealing wax.\nAnd of cabbages, and kings.\n\n' for i in range(40))


def messy(root: Path) -> Path:
    "A folder like a documentation tree: two good files and one of each kind of unreadable file."
    d = root / 'doc'
    (d / 'pkg').mkdir(parents=True)
    (d / 'README.txt').write_text(GOOD)
    (d / 'pkg' / 'notes.md').write_text(GOOD.replace('ships', 'shoes'))
    (d / 'pkg' / 'data.json').write_text(json.dumps({'a': 1, 'b': [1, 2]}, indent=2))      # one object, not JSONL
    (d / 'pkg' / 'changelog.txt').write_bytes('caf\xe9 au lait\n'.encode('latin-1'))      # Latin-1
    (d / 'pkg' / 'manual.txt.gz').write_bytes(gzip.compress(b'%PDF-1.4\n\x00\x01binary'))   # binary
    (d / 'pkg' / 'cut.txt.gz').write_bytes(gzip.compress(GOOD.encode())[:60])              # truncated archive
    (d / 'pkg' / 'logo.png').write_bytes(b'\x89PNG')                                      # no corpus kind
    return d


REASONS = {'not JSON Lines': 1, 'not UTF-8': 1, 'binary': 1, 'corrupt archive': 1}


def reasons(bad): return {r: sum(b.reason == r for b in bad) for r in {b.reason for b in bad}}


def test_validate_skips_found_bad_files_and_reports_them(tmp_path):
    d = messy(tmp_path)
    rep = validate_corpus(d)
    assert sorted(Path(f.path).name for f in rep.files) == ['README.txt', 'notes.md']
    assert reasons(rep.skipped_bad) == REASONS and not rep.errors
    assert [Path(s.path).name for s in rep.corpus] == ['README.txt', 'notes.md']
    assert rep.skipped == {'.png': 1}
    text = str(rep)
    assert 'skipped 4 unreadable files' in text and 'skipped 1 .png' in text
    assert sum(line.startswith('skipped: ') for line in text.splitlines()) == 4       # one line per problem
    # strict: the same problems are errors, all counted in the one message
    with pytest.raises(CorpusError, match=r'and 3 more problem'):
        validate_corpus(d, strict=True)
    # a bad file named explicitly stays an error
    with pytest.raises(CorpusError, match=r'changelog\.txt: not valid UTF-8'):
        validate_corpus([d / 'README.txt', d / 'pkg' / 'changelog.txt'])
    # a glob finds files too: the cut archive is skipped, the others are read
    rep = validate_corpus(str(d / '**' / '*.t*'))
    assert reasons(rep.skipped_bad) == {'not UTF-8': 1, 'binary': 1, 'corrupt archive': 1}
    assert [Path(f.path).name for f in rep.files] == ['README.txt']


def test_a_file_bad_after_3_mb_leaves_nothing_behind(tmp_path):
    d = tmp_path / 'c'; d.mkdir()
    (d / 'a.txt').write_text(GOOD)
    late = (GOOD * 1100).encode()                                  # 3.2 MB of good documents, then a Latin-1 byte
    assert len(late) > 3_000_000
    (d / 'b.txt').write_bytes(late + b'\n\ncaf\xe9\n')
    rep = validate_corpus(d)
    assert rep.num_documents == 40 and len(rep.duplicates) == 0           # nothing of b.txt counted, no digests
    assert [b.reason for b in rep.skipped_bad] == ['not UTF-8']


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, '-m', 'transformer_nb', *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_validate_corpus_command_lists_every_problem(tmp_path):
    d = messy(tmp_path)
    for i in range(22):                                             # 26 problems in all: 20 lines, then the rest
        (d / 'pkg' / f'latin{i:02d}.txt').write_bytes(b'\xe9t\xe9\n')
    r = cli('validate-corpus', d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(line.startswith('skipped: ') for line in lines) == 20 and '... and 6 more' in lines
    assert any(line.startswith('skipped 26 unreadable files: 23 not UTF-8') for line in lines)
    assert any(line.startswith('skipped 1 .png') for line in lines)          # the skip list --help promises
    assert 'corpus OK' in r.stdout
    r = cli('validate-corpus', d, '--strict')
    assert r.returncode == 2 and sum(line.startswith('error: ') for line in r.stdout.splitlines()) == 20
    assert r.stderr.strip().splitlines()[-1].endswith('(and 25 more problem(s); tnb validate-corpus lists them)')
    r = cli('validate-corpus', d / 'README.txt', d / 'pkg' / 'changelog.txt', d / 'pkg' / 'cut.txt.gz')
    assert r.returncode == 2 and sum(line.startswith('error: ') for line in r.stdout.splitlines()) == 2


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp('tok')
    (d / 'good.txt').write_text(GOOD)
    train_bbpe([d / 'good.txt'], d / 'tok', vocab_size=300, show_progress=False)
    return d / 'tok'


def test_prepare_skips_found_bad_files_and_records_them(tmp_path, tok):
    d = messy(tmp_path)
    data = prepare(d, tok, tmp_path / 'cache', show_progress=False, verbose=False, workers=1)
    m = data.manifest
    assert [Path(s['path']).name for s in m['sources']] == ['README.txt', 'notes.md']
    bad = m['skipped_files']['unreadable']
    assert bad['count'] == 4 and {r: v['count'] for r, v in bad['by_reason'].items()} == REASONS
    assert bad['by_reason']['binary']['first'] == [str(d / 'pkg' / 'manual.txt.gz')]
    assert m['skipped_files']['by_extension'] == {'.png': 1}
    assert m['train']['num_documents'] + m['val']['num_documents'] == 80
    assert 'skipped 4 unreadable file(s)' in data.summary()
    # strict: an error, and nothing written (no shards, no partial folder, no manifest)
    with pytest.raises(CorpusError, match='and 3 more problem'):
        prepare(d, tok, tmp_path / 'strict', show_progress=False, verbose=False, workers=1, strict_files=True)
    # (only the cache folder's lock file, which every prepare takes)
    assert [p.name for p in (tmp_path / 'strict').iterdir()] == ['.prepare.lock']
    # strict after a lenient prepare of the same corpus: the cached shards left files out, so they are refused
    with pytest.raises(CorpusError, match=r'prepared without strict_files and left out 4 unreadable file\(s\)'):
        prepare(d, tok, data.dir.parent, show_progress=False, verbose=False, workers=1, strict_files=True)
    # the same corpus with one of its bad files also named: an error, not the cached shards that left it out
    with pytest.raises(CorpusError, match=r'changelog.txt: named explicitly, but unreadable'):
        prepare([d, d / 'pkg' / 'changelog.txt'], tok, data.dir.parent, show_progress=False, verbose=False, workers=1)


def test_train_tokenizer_command_skips_found_bad_files(tmp_path):
    d = messy(tmp_path)
    r = cli('train-tokenizer', '--input', d, '--out', tmp_path / 'tok', '--vocab-size', 300, '--no-progress')
    assert r.returncode == 0, r.stderr
    assert 'skipped 4 unreadable files' in r.stdout + r.stderr
    man = json.loads((tmp_path / 'tok' / 'manifest.json').read_text())
    assert man['training']['files'] == 2
    r = cli('train-tokenizer', '--input', d, '--out', tmp_path / 'tok2', '--strict', '--no-progress')
    assert r.returncode == 2 and not (tmp_path / 'tok2').exists()


def test_train_tokenizer_function_skips_found_bad_files(tmp_path):
    "The Python API does what the command does: found bad files left out and named in the summary; strict refuses."
    from transformer_nb.tokenizer import TokenizerError, train_tokenizer
    d = messy(tmp_path)
    s = train_tokenizer(d, tmp_path / 'tok', vocab_size=300, show_progress=False)
    assert s.files == 2 and s.skipped.startswith('skipped 4 unreadable files: ') and s.skipped in str(s)
    with pytest.raises(TokenizerError, match='and 3 more problem'):
        train_tokenizer(d, tmp_path / 'tok2', vocab_size=300, show_progress=False, strict=True)
    assert not (tmp_path / 'tok2').exists()


def test_orchestrate_corpus_stage_skips_found_bad_files(tmp_path):
    from transformer_nb.orchestrate import plan_run, stage_corpus
    d = messy(tmp_path)
    plan = plan_run('local', tmp_path / 'run', [str(d)], glob='*.txt*', show_progress=False)
    assert len(plan.config.data.train_shards) == 4                         # README, changelog, manual, cut
    corpus = stage_corpus(plan)
    assert [Path(s.path).name for s in corpus] == ['README.txt']
    assert [Path(p).name for p in plan.config.data.train_shards] == ['README.txt']   # the config names the good one
    strict = plan_run('local', tmp_path / 'run', [str(d)], show_progress=False, strict_files=True)
    with pytest.raises(CorpusError): stage_corpus(strict)


# ----------------------------------------------------------------------------------------------
# decompression in bounded memory

def bz2_bomb(path: Path, mib: int) -> Path:
    "`mib` MiB of 'a' and no newline, bzip2-compressed a MiB at a time (the test itself never holds it)."
    c, block = bz2.BZ2Compressor(9), b'a' * (1 << 20)
    with open(path, 'wb') as f:
        for _ in range(mib): f.write(c.compress(block))
        f.write(c.flush())
    return path


def test_decompression_bomb_is_read_in_bounded_memory(tmp_path):
    p = bz2_bomb(tmp_path / 'bomb.txt.bz2', 200)
    assert p.stat().st_size < 1000
    tracemalloc.start()
    try:
        with open_binary(p) as f: assert f.read(1) == b'a'
        one_byte = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        n = longest = 0
        for piece in iter_documents(p, max_chars=1 << 20):
            n += len(piece); longest = max(longest, len(piece))
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    print(f"177-byte-class bz2 of 200 MiB: one-byte read peak {one_byte / 2**20:.1f} MiB, whole read in pieces peak "
          f"{peak / 2**20:.1f} MiB")
    assert one_byte < 8 << 20, one_byte                 # was 199 MiB: the whole file decompressed at once
    assert n == (200 << 20) + 1                          # (+ the newline ending the last line)
    assert longest <= 1 << 20                            # every piece within the bound
    assert peak < 32 << 20, peak                         # the expanded size is 200 MiB


@pytest.mark.parametrize('ext', ['.gz', '.xz', '.zst'])
def test_one_byte_read_is_bounded_for_every_compression(tmp_path, ext):
    data = b'a' * (64 << 20)
    pack = {'.gz': lambda b: gzip.compress(b, 9), '.xz': lzma.compress,
            '.zst': zstandard.ZstdCompressor(level=19).compress}[ext]
    p = tmp_path / f'bomb.txt{ext}'
    p.write_bytes(pack(data)); del data
    tracemalloc.start()
    try:
        with open_binary(p) as f:
            assert f.read(1) == b'a'
            one_byte = tracemalloc.get_traced_memory()[1]
            total = 1 + sum(len(b) for b in iter(lambda: f.read(1 << 20), b''))
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    assert total == 64 << 20
    assert one_byte < 20 << 20 and peak < 24 << 20, (one_byte, peak)


# ----------------------------------------------------------------------------------------------
# null texts

def test_null_texts_are_counted_and_skipped(tmp_path, tok):
    d = tmp_path / 'nulls'; d.mkdir()
    recs = [{'text': 'A first record.\n'}, {'text': None}, {'text': ''}, {'text': 'A second record.\n'}] * 10
    (d / 'a.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    pq.write_table(pa.table({'text': [r['text'] for r in recs]}), d / 'b.parquet')
    assert list(iter_documents(d / 'a.jsonl')) == ['A first record.\n', 'A second record.\n'] * 10
    assert list(iter_documents(d / 'b.parquet')) == ['A first record.\n', 'A second record.\n'] * 10
    rep = validate_corpus(d)
    assert rep.num_documents == 40
    assert sum('20 of 40 records have an empty text (10 of them null) (skipped)' in w for w in rep.warnings) == 2
    data = prepare(d, tok, tmp_path / 'cache', show_progress=False, verbose=False, workers=1)
    assert data.train.num_documents + data.val.num_documents == 40


def test_lone_surrogate_record_is_a_bad_file_not_a_traceback(tmp_path):
    r"""A JSON '\ud800' escape without its pair parses into a string no tokenizer can encode (tokenizers raises
    a TypeError deep inside prepare): found in a folder, the file is skipped as 'not Unicode'; named, it is one
    error naming the file, line, field and character."""
    d = tmp_path / 'c'
    d.mkdir()
    (d / 'good.txt').write_text(GOOD)
    (d / 'bad.jsonl').write_text('{"text": "fine"}\n{"text": "ab\\ud800c"}\n')
    rep = validate_corpus(d)
    assert reasons(rep.skipped_bad) == {'not Unicode': 1} and not rep.errors
    assert [Path(s.path).name for s in rep.corpus] == ['good.txt']
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: field 'text': character 2 is a lone surrogate U\+D800"):
        list(iter_documents([d / 'bad.jsonl']))


def test_a_file_named_and_found_counts_as_named(tmp_path):
    "Named explicitly, a bad file is an error, whether its folder comes before it in the list or after."
    d = messy(tmp_path)
    latin1 = d / 'pkg' / 'changelog.txt'
    for order in ([d, latin1], [latin1, d]):
        with pytest.raises(CorpusError, match='changelog.txt'):
            validate_corpus(order)


def test_reason_comes_from_the_problem_not_the_path(tmp_path):
    "A folder named 'corrupt samples' holding a file that is not JSON Lines: the reason is 'not JSON Lines'."
    d = tmp_path / 'corrupt samples'
    d.mkdir()
    (d / 'good.txt').write_text(GOOD)
    (d / 'a.jsonl').write_text('{"text": "fine"}\n{oops\n')
    pq.write_table(pa.table({'text': pa.array([1, 2], pa.int64())}), d / 'numbers.parquet')
    rep = validate_corpus(d)
    assert reasons(rep.skipped_bad) == {'not JSON Lines': 1, 'no text field': 1}, [b.message for b in rep.bad]


def test_a_found_file_cut_part_way_ends_its_document(tmp_path):
    "Streaming's reader: a found file that breaks inside a document ends that document; the next file's is its own."
    from transformer_nb.sources import corpus_pieces
    d = tmp_path / 'c'
    d.mkdir()
    big = ('one long document line\n' * 200_000).encode()                # a single document of 4.6 MB
    (d / 'a.txt.gz').write_bytes(gzip.compress(big)[: len(gzip.compress(big)) * 6 // 10])
    (d / 'b.txt').write_text('the next file\n')
    with pytest.warns(UserWarning, match='skipped the rest of an unreadable file'):
        out = list(corpus_pieces(d))
    ends = [(s, end) for (s, _), _, end in out]
    assert ends[-1] == (1, True) and ends[-2] == (0, True)                 # a.txt.gz's document is closed first
    assert out[-1][1] == 'the next file\n'


def test_long_line_lengths_across_chunks(tmp_path):
    "A 3,000,000-character line and then a 2,500,000-character one: each reported with its own length and line."
    from transformer_nb.sources import FileStats, scan_file
    p = tmp_path / 'long.txt'
    p.write_text('x' * 3_000_000 + '\n' + 'y' * 2_500_000 + '\n')
    st = FileStats(p)
    for _ in scan_file(p, st, max_chars=1 << 20): pass
    assert st.max_line_chars == 3_000_000, st.max_line_chars


def test_links_to_folders_and_odd_files_are_counted(tmp_path):
    "A link to a folder is not followed, and a broken link or a pipe is no corpus file: each is counted, not lost."
    import os
    real = tmp_path / 'real'
    real.mkdir()
    (real / 'a.txt').write_text(GOOD)
    d = tmp_path / 'corpus'
    d.mkdir()
    (d / 'b.txt').write_text(GOOD)
    (d / 'linked').symlink_to(real, target_is_directory=True)
    (d / 'gone.txt').symlink_to(tmp_path / 'nowhere.txt')
    os.mkfifo(d / 'pipe.txt')
    rep = validate_corpus(d)
    assert [Path(s.path).name for s in rep.corpus] == ['b.txt']
    assert rep.skipped == {'linked folders': 1, 'not regular files': 2}
