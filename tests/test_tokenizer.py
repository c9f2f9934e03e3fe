"""Tokenizer: round-trip property tests (hypothesis), artifact verification and tampering, input errors.

The notebook nbs/01_tokenizer.ipynb shows and tests each function on small examples; this file
throws generated strings and damaged artifacts at it.
"""
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from transformer_nb.config import UserError, sha256_file
from transformer_nb.tokenizer import (
    DEFAULT_SPECIAL_TOKENS, TOKENIZER_FILES, TokenizerError, bos_id, build_from_artifacts,
    build_from_vocab_merges, copy_tokenizer_artifacts, eos_id, pad_id, read_special_tokens,
    scan_text_file, special_token_id, tokenizer_fingerprint, tokenizer_from_config, train_bbpe, train_tokenizer,
    verify_tokenizer_artifacts)

SHAKESPEARE = Path(__file__).resolve().parent.parent.parent / 'shared' / 'data' / 'tinyshakespeare.txt'

# ---------------------------------------------------------------------------------------------
# A small multilingual corpus and tokenizers trained on it once per module (about a second).

WORDS = ("the king queen lord night crown honour shore city speaks dreams fights longs remembers "
         "Café Müller naïve façade über straße 東京 日本語 テキスト 한국어 مرحبا שלום Ελληνικά русский "
         "🙂 🎭 👩‍👩‍👧 e\u0301 a\u0308 ﬁ \t  <eos> <pad>").split(' ')


def write_corpus(path: Path, n_lines=2000, seed=0):
    import random
    rng = random.Random(seed)
    lines = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(0, 12))) for _ in range(n_lines)]
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return path


def doc_lines(path: Path) -> int:
    "The lines of a text file's documents: its lines with a non-whitespace character."
    return sum(1 for line in path.read_text(encoding='utf-8').splitlines() if line.strip())


@pytest.fixture(scope='module')
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp('tok')
    corpus = write_corpus(root / 'corpus.txt')
    train_bbpe([corpus], root / 'plain', vocab_size=600, min_frequency=2, show_progress=False)
    train_bbpe([corpus], root / 'be', vocab_size=500, add_bos_eos=True, show_progress=False)
    return root


@pytest.fixture(scope='module')
def toks(arts):
    return {
        'json': build_from_artifacts(arts / 'plain'),
        'vocab_merges': build_from_vocab_merges(arts / 'plain' / 'vocab.json', arts / 'plain' / 'merges.txt'),
        'bos_eos': build_from_artifacts(arts / 'be' / 'tokenizer.json'),
    }


# Strings: hypothesis' full Unicode text (every code point except lone surrogates, which are not
# encodable as UTF-8 and so are not text a file can hold), mixed with pieces that stress byte-level
# BPE: combining marks, ZWJ emoji sequences, CJK, RTL scripts, all whitespace kinds, control
# characters, and the special tokens' own text.
PIECES = ['<eos>', '<pad>', '<bos>', '<eos', 'eos>', ' ', '  ', '\t', '\n', '\r\n', '\r', '\x00', '\x0b', '\x0c',
          '\u00a0', '\u2028', '\u3000', '\ufeff', 'é', 'e\u0301', '\u0301', '👩‍👩‍👧', '🇫🇷', '日本語', 'مرحبا',
          '\U0010ffff', '\ufffd', "'s", "'ll", 'the', ' the']
texts = st.one_of(
    st.text(),
    st.lists(st.one_of(st.text(max_size=5), st.sampled_from(PIECES),
                       st.characters(categories=['Mn', 'Mc', 'Me', 'Zs', 'Cc', 'Cf', 'So']),
                       st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
                       st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)),
             max_size=40).map(''.join))

PROP = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROP
@given(s=texts)
def test_round_trip(toks, s):
    for name, tok in toks.items():
        ids = tok.encode(s).ids
        assert tok.decode(ids) == s, name
        assert tok.decode(ids, skip_special_tokens=False) == s or name == 'bos_eos', name


@PROP
@given(s=texts)
def test_json_and_vocab_merges_give_identical_ids(toks, s):
    assert toks['json'].encode(s).ids == toks['vocab_merges'].encode(s).ids


@PROP
@given(s=texts)
def test_special_ids_never_come_from_text(toks, s):
    """Text that reads '<eos>' is plain text: special ids only come from code (or the template)."""
    tok = toks['json']
    assert all(i >= len(DEFAULT_SPECIAL_TOKENS) for i in tok.encode(s).ids)
    ids = toks['bos_eos'].encode(s).ids
    assert ids[0] == bos_id(toks['bos_eos']) and ids[-1] == eos_id(toks['bos_eos'])
    assert all(i >= len(DEFAULT_SPECIAL_TOKENS) for i in ids[1:-1])


@PROP
@given(s=texts)
def test_batch_encode_matches_single(toks, s):
    tok = toks['json']
    assert [e.ids for e in tok.encode_batch([s, s + 'x'])] == [tok.encode(s).ids, tok.encode(s + 'x').ids]


def test_plain_library_load_round_trips_with_specials_kept(arts):
    """A bare Tokenizer.from_file (library default: special-token text matched) still round-trips
    when special tokens are not skipped; documented in the notebook."""
    tok = Tokenizer.from_file(str(arts / 'plain' / 'tokenizer.json'))
    s = 'a <eos> b<pad>'
    assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason='shared Shakespeare text not available')
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=texts)
def test_held_back_corpus_round_trip(shakespeare_tok, s):
    """Trained on English only, the tokenizer still round-trips text from anywhere else."""
    assert shakespeare_tok.decode(shakespeare_tok.encode(s).ids) == s


@pytest.fixture(scope='module')
def shakespeare_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp('sh')
    return train_bbpe([SHAKESPEARE], d, vocab_size=1000, max_lines=5000, seed=3, show_progress=False)


# ---------------------------------------------------------------------------------------------
# Special tokens: ids 0..n-1 in order, stable across save/load both ways.

def test_special_token_ids_stable(tmp_path):
    corpus = write_corpus(tmp_path / 'c.txt', 300)
    (tmp_path / 'special_tokens.txt').write_text('<|endoftext|>\n<pad>\n\n<mask>\n <sep> \n<bos>\n')
    specials = read_special_tokens(tmp_path / 'special_tokens.txt')
    assert specials == ['<|endoftext|>', '<pad>', '<mask>', '<sep>', '<bos>']
    tok = train_bbpe([corpus], tmp_path / 't', vocab_size=400, special_tokens=tmp_path / 'special_tokens.txt',
                     show_progress=False)
    want = {t: i for i, t in enumerate(specials)}
    only_vm = tmp_path / 'vm'
    only_vm.mkdir()
    for n in ('vocab.json', 'merges.txt', 'manifest.json'):
        shutil.copy(tmp_path / 't' / n, only_vm / n)
    (only_vm / 'manifest.json').unlink()  # no manifest: special tokens come from the argument
    loaded = [tok, build_from_artifacts(tmp_path / 't'), build_from_artifacts(tmp_path / 't' / 'tokenizer.json'),
              build_from_vocab_merges(tmp_path / 't' / 'vocab.json', tmp_path / 't' / 'merges.txt'),
              build_from_artifacts(only_vm, special_tokens=specials)]
    sample = write_corpus(tmp_path / 's.txt', 50, seed=9).read_text()
    loaded.append(build_from_artifacts(tmp_path / 't' / 'vocab.json'))
    for t in loaded:
        assert tokenizer_fingerprint(t) == tokenizer_fingerprint(tok)
        assert {s: t.token_to_id(s) for s in specials} == want
        assert t.encode(sample).ids == tok.encode(sample).ids
        assert t.get_vocab() == tok.get_vocab()
    assert (eos_id(tok), bos_id(tok), pad_id(tok)) == (0, 4, 1)
    assert special_token_id(tok, '<mask>') == 2
    assert json.loads((tmp_path / 't' / 'manifest.json').read_text())['special_tokens'] == want


def test_special_token_helpers_errors(toks):
    with pytest.raises(TokenizerError, match="no token '<nope>'"):
        special_token_id(toks['json'], '<nope>')
    tok = Tokenizer.from_str(toks['json'].to_str())
    assert (pad_id(tok), bos_id(tok), eos_id(tok)) == (0, 1, 2)


@pytest.mark.parametrize('content,match', [
    ('', 'no special tokens'), ('<a>\n<b>\n<a>\n', r':3: duplicate special token'), (b'\xff\n', 'not valid UTF-8')])
def test_special_tokens_file_errors(tmp_path, content, match):
    p = tmp_path / 'special_tokens.txt'
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TokenizerError, match=match):
        read_special_tokens(p)
    with pytest.raises(TokenizerError, match='special tokens file not found'):
        read_special_tokens(tmp_path / 'missing.txt')


# ---------------------------------------------------------------------------------------------
# Artifacts and manifest.

def test_manifest_contents(arts):
    d = arts / 'plain'
    m = json.loads((d / 'manifest.json').read_text())
    assert m['format'] == 'transformer_nb.tokenizer' and m['format_version'] == 1
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', m['created_at'])
    # the small corpus runs out of pairs seen twice before 600: the manifest records what was reached
    assert m['vocab_size'] == build_from_artifacts(d).get_vocab_size() < 600
    assert m['special_tokens'] == {'<pad>': 0, '<bos>': 1, '<eos>': 2}
    cfg = m['config']
    assert (cfg['vocab_size'], cfg['min_frequency'], cfg['special_tokens'], cfg['seed'], cfg['max_lines'],
            cfg['add_bos_eos']) == (600, 2, DEFAULT_SPECIAL_TOKENS, 0, None, False)
    assert set(m['artifacts']) == set(TOKENIZER_FILES) - {'manifest.json'}
    for name, meta in m['artifacts'].items():
        assert meta == {'sha256': sha256_file(d / name), 'size': (d / name).stat().st_size}
    (c,) = m['corpus']
    corpus = arts / 'corpus.txt'
    assert (c['sha256'], c['size'], c['lines']) == (sha256_file(corpus), corpus.stat().st_size, 2000)
    # lines_total / lines_used count the documents' lines (the blank separator lines are in no document)
    tr = m['training']
    assert tr['lines_used'] == tr['lines_total'] == doc_lines(corpus) < 2000 and tr['bytes'] == corpus.stat().st_size
    assert {'tokenizers', 'transformer_nb', 'python'} <= set(m['versions'])
    be = json.loads((arts / 'be' / 'manifest.json').read_text())['config']
    assert (be['add_bos_eos'], be['bos_token'], be['eos_token']) == (True, '<bos>', '<eos>')


def test_deterministic_and_seeded(tmp_path, arts):
    corpus = arts / 'corpus.txt'
    def tj(d): return (d / 'tokenizer.json').read_bytes()
    for name, kw in {'a': dict(seed=0), 'b': dict(seed=0), 'c': dict(seed=5),
                     'm1': dict(seed=1, max_lines=300), 'm2': dict(seed=1, max_lines=300),
                     'm3': dict(seed=2, max_lines=300)}.items():
        train_bbpe([corpus], tmp_path / name, vocab_size=450, show_progress=False, **kw)
    assert tj(tmp_path / 'a') == tj(tmp_path / 'b') == tj(tmp_path / 'c')  # order never matters
    assert tj(tmp_path / 'm1') == tj(tmp_path / 'm2') != tj(tmp_path / 'm3')  # the seed picks the sample
    tr = json.loads((tmp_path / 'm1' / 'manifest.json').read_text())['training']
    assert (tr['lines_used'], tr['lines_total']) == (300, doc_lines(corpus))


def test_copy_artifacts(tmp_path, arts):
    out = copy_tokenizer_artifacts(arts / 'plain' / 'tokenizer.json', tmp_path / 'ckpt' / 'tokenizer')
    assert [p.name for p in out] == list(TOKENIZER_FILES)
    assert verify_tokenizer_artifacts(tmp_path / 'ckpt' / 'tokenizer') == []
    assert build_from_artifacts(tmp_path / 'ckpt' / 'tokenizer').get_vocab() == build_from_artifacts(arts / 'plain').get_vocab()


def test_tokenizer_from_config(arts):
    d = arts / 'plain'
    a = tokenizer_from_config({'tokenizer_json': str(d / 'tokenizer.json'), 'special_tokens': ['<eos>']})
    b = tokenizer_from_config({'vocab': str(d / 'vocab.json'), 'merges': str(d / 'merges.txt')})
    assert a.encode('the king 🙂').ids == b.encode('the king 🙂').ids
    with pytest.raises(TokenizerError, match='must be given together'):
        tokenizer_from_config({'vocab': str(d / 'vocab.json')})
    with pytest.raises(TokenizerError, match='set tokenizer.tokenizer_json'):
        tokenizer_from_config({})


# ---------------------------------------------------------------------------------------------
# Tampering and malformed artifacts: always a TokenizerError naming the file, never a traceback.

@pytest.fixture
def copy_of(arts, tmp_path):
    def make(name='plain'):
        d = tmp_path / name
        shutil.copytree(arts / name, d)
        return d
    return make


@pytest.mark.parametrize('name', ['tokenizer.json', 'vocab.json', 'merges.txt'])
@pytest.mark.parametrize('how', ['flip', 'append', 'truncate'])
def test_tamper_detected(copy_of, name, how):
    d = copy_of()
    p = d / name
    data = bytearray(p.read_bytes())
    if how == 'flip': data[len(data) // 2] ^= 0x01
    elif how == 'append': data += b' '
    else: data = data[:-1]
    p.write_bytes(bytes(data))
    probs = verify_tokenizer_artifacts(d)
    assert len(probs) == 1 and name in probs[0]
    for target in (d, d / 'tokenizer.json'):
        with pytest.raises(TokenizerError, match=rf'{re.escape(name)}: sha256 mismatch \(manifest [0-9a-f]{{12}}…, file [0-9a-f]{{12}}…'):
            build_from_artifacts(target)
    with pytest.raises(TokenizerError, match='sha256 mismatch'):
        build_from_vocab_merges(d / 'vocab.json', d / 'merges.txt')
    with pytest.raises(TokenizerError, match='sha256 mismatch'):
        copy_tokenizer_artifacts(d, d.parent / 'copy')
    assert not (d.parent / 'copy').exists()


@pytest.mark.parametrize('name', ['vocab.json', 'merges.txt', 'tokenizer.json'])
def test_missing_listed_artifact(copy_of, name):
    d = copy_of()
    (d / name).unlink()
    with pytest.raises(TokenizerError, match=rf'{re.escape(name)}: listed in manifest.json but missing'):
        build_from_artifacts(d)


def test_manifest_tampering(copy_of):
    d = copy_of()
    m = json.loads((d / 'manifest.json').read_text())
    m['artifacts']['vocab.json']['sha256'] = '0' * 64
    (d / 'manifest.json').write_text(json.dumps(m))
    with pytest.raises(TokenizerError, match=r'vocab.json: sha256 mismatch \(manifest 000000000000…'):
        build_from_artifacts(d)
    m = json.loads((copy_of('be') / 'manifest.json').read_text())
    m['special_tokens'] = {'<pad>': 0, '<bos>': 2, '<eos>': 1}
    (d / 'manifest.json').write_text(json.dumps(m | {'artifacts': {}}))
    with pytest.raises(TokenizerError, match=r"special token '<bos>' has id 1, manifest.json says 2"):
        build_from_artifacts(d)
    m['special_tokens'] = {'<pad>': 0, '<sep>': 3}
    (d / 'manifest.json').write_text(json.dumps(m | {'artifacts': {}}))
    with pytest.raises(TokenizerError, match=r"special token '<sep>' from manifest.json is missing"):
        build_from_artifacts(d)


@pytest.mark.parametrize('content,match', [
    ('{"format": ', r'manifest.json: tokenizer manifest is not valid JSON \(.* line 1, column'),
    ('[1, 2]', "manifest.json: not a tokenizer manifest"),
    ('{"format": "other", "artifacts": {}}', "format 'other'"),
    ('{"format": "transformer_nb.tokenizer", "format_version": 99, "artifacts": {}}', 'format_version 99 is not supported'),
    (b'\xff\xfe', 'manifest.json: tokenizer manifest is not valid UTF-8'),
])
def test_malformed_manifest(copy_of, content, match):
    d = copy_of()
    (d / 'manifest.json').write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TokenizerError, match=match):
        build_from_artifacts(d)


@pytest.mark.parametrize('content,match', [
    ('not json', r'tokenizer.json: tokenizer.json is not valid JSON'),
    ('{"version": "1.0", "model": 3}', r'tokenizer.json: not a valid tokenizer file \('),
    ('', 'not valid JSON'),
])
def test_malformed_tokenizer_json_without_manifest(copy_of, content, match):
    d = copy_of()
    (d / 'manifest.json').unlink()
    (d / 'tokenizer.json').write_text(content)
    with pytest.raises(TokenizerError, match=match):
        build_from_artifacts(d)


def test_vocab_merges_errors(copy_of, tmp_path):
    d = copy_of()
    (d / 'manifest.json').unlink()
    (d / 'tokenizer.json').unlink()
    v = json.loads((d / 'vocab.json').read_text())
    del v['<eos>']
    (d / 'vocab.json').write_text(json.dumps(v))
    with pytest.raises(TokenizerError, match=r"vocab.json: special token '<eos>' is not in the vocabulary"):
        build_from_artifacts(d)
    (d / 'vocab.json').write_text('{"a": ')
    with pytest.raises(TokenizerError, match='vocab.json: vocab.json is not valid JSON'):
        build_from_artifacts(d)
    (d / 'vocab.json').write_text('{"<pad>": 0, "<bos>": 1, "<eos>": 2, "a": 3}')
    (d / 'merges.txt').write_text('#version: 0.2\nq z\n')
    with pytest.raises(TokenizerError, match='merges.txt: cannot build BPE'):
        build_from_artifacts(d)
    (d / 'merges.txt').unlink()
    with pytest.raises(TokenizerError, match='no tokenizer.json, nor vocab.json'):
        build_from_artifacts(d)
    with pytest.raises(TokenizerError, match='no such file or directory'):
        build_from_artifacts(tmp_path / 'nowhere')


# ---------------------------------------------------------------------------------------------
# Training inputs and settings: checked up front, one clear line naming the file.

@pytest.mark.parametrize('data,match', [
    (b'', r'empty file'),
    (b'ok line\nsecond \xff line\n', r'not valid UTF-8 at byte 15, line 2'),
    (b'abc\n\xe2\x82', r'not valid UTF-8: truncated character at the end \(byte 4\)'),
    (b'text\n\nmore\x00binary', r'binary content \(NUL byte\) at byte 10, line 3'),
    (b'\xfe\xff\x00h\x00i', r'not valid UTF-8 at byte 0, line 1 \(it looks like UTF-16'),
])
def test_bad_corpus_files(tmp_path, arts, data, match):
    bad = tmp_path / 'bad input.txt'
    bad.write_bytes(data)
    with pytest.raises(TokenizerError, match=re.escape(str(bad)) + ': ' + match):
        train_bbpe([arts / 'corpus.txt', bad], tmp_path / 'out', show_progress=False)
    assert not (tmp_path / 'out').exists()


def test_bad_inputs_and_settings(tmp_path, arts):
    corpus = arts / 'corpus.txt'
    (tmp_path / 'emptydir').mkdir()
    cases = [
        (dict(inputs=[tmp_path / 'missing.txt']), 'missing.txt: no such file or directory'),
        (dict(inputs=[tmp_path / 'emptydir']), 'emptydir: directory contains no corpus files'),
        (dict(inputs=[str(tmp_path / 'zz*.txt')]), r'zz\*.txt: no files match this pattern'),
        (dict(inputs=[]), 'no corpus files given'),
        (dict(vocab_size=258), r'vocab_size: expected an integer >= 259, got 258'),
        (dict(vocab_size='big'), 'vocab_size'),
        (dict(min_frequency=-1), 'min_frequency'),
        (dict(max_lines=0), 'max_lines'),
        (dict(special_tokens=['<a>', '']), 'invalid token'),
        (dict(special_tokens=['<a>', '<a>']), "duplicate '<a>'"),
        (dict(special_tokens=tmp_path / 'nope.txt'), 'nope.txt: special tokens file not found'),
        (dict(add_bos_eos=True, special_tokens=['<pad>', '<eos>']), 'add_bos_eos needs a BOS'),
    ]
    for kw, match in cases:
        kw = {'inputs': [corpus]} | kw
        with pytest.raises(TokenizerError, match=match):
            train_bbpe(kw.pop('inputs'), tmp_path / 'out', show_progress=False, **kw)
        assert not (tmp_path / 'out').exists()
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(TokenizerError, match='afile: exists and is not a folder'):
        train_bbpe([corpus], tmp_path / 'afile', vocab_size=300, show_progress=False)
    assert issubclass(TokenizerError, UserError)


def test_inputs_folder_and_glob(tmp_path):
    (tmp_path / 'in' / 'sub').mkdir(parents=True)
    write_corpus(tmp_path / 'in' / 'a.txt', 100, seed=1)
    write_corpus(tmp_path / 'in' / 'sub' / 'b.txt', 100, seed=2)
    (tmp_path / 'in' / 'ignored.png').write_bytes(b'\x89PNG not text')      # not a corpus kind: skipped in folders
    train_bbpe([tmp_path / 'in'], tmp_path / 'o1', vocab_size=300, show_progress=False)
    train_bbpe([str(tmp_path / 'in' / '**' / '*.txt')], tmp_path / 'o2', vocab_size=300, show_progress=False)
    m1, m2 = (json.loads((tmp_path / o / 'manifest.json').read_text()) for o in ('o1', 'o2'))
    assert [c['path'] for c in m1['corpus']] == [c['path'] for c in m2['corpus']]
    assert [Path(c['path']).name for c in m1['corpus']] == ['a.txt', 'b.txt']


# scan_text_file reads in chunks: its verdict, byte offset and line count must not depend on where
# the chunk boundaries fall. Compare with decoding the whole thing at once.
@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.one_of(st.binary(max_size=6), st.sampled_from(
    [b'\n', 'é'.encode(), '🙂'.encode(), '東'.encode(), b'\xc3', b'\xf0\x9f', b'\xed\xa0\x80', b'\xc0\xaf'])),
    min_size=1).map(b''.join), chunk_size=st.integers(1, 7))
def test_scan_matches_whole_decode(data, chunk_size):
    assume(data and b'\0' not in data)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / 'f.txt'
        p.write_bytes(data)
        try:
            data.decode('utf-8')
        except UnicodeDecodeError as e:
            line = data.count(b'\n', 0, e.start) + 1
            with pytest.raises(TokenizerError, match=rf'at(?: the end \(byte| byte) {e.start}\b'):
                scan_text_file(p, chunk_size=chunk_size)
            if e.end < len(data) or e.reason != 'unexpected end of data':
                with pytest.raises(TokenizerError, match=rf'byte {e.start}, line {line}(?!\d)'):
                    scan_text_file(p, chunk_size=chunk_size)
        else:
            cf = scan_text_file(p, chunk_size=chunk_size)
            assert cf.size == len(data) and cf.sha256 == sha256_file(p)
            assert cf.lines == len(data.split(b'\n')) - (data.endswith(b'\n'))


# ---------------------------------------------------------------------------------------------
# The train-tokenizer job function the CLI wraps.

def test_train_tokenizer_summary(tmp_path, arts):
    s = train_tokenizer([arts / 'corpus.txt'], tmp_path / 'job', vocab_size=350, max_lines=1000, seed=4,
                        show_progress=False)
    text = str(s)
    assert s.vocab_size == 350 and s.lines_used == 1000 and s.lines_total == doc_lines(arts / 'corpus.txt')
    assert s.files == 1
    assert s.special_tokens == {'<pad>': 0, '<bos>': 1, '<eos>': 2}
    assert s.chars_per_token > 1
    assert set(s.artifacts) == set(TOKENIZER_FILES)
    for needle in ('job', '350 tokens', f'1,000 of {s.lines_total:,} lines', '<eos>=2', 'characters/token', '  time', 'merges.txt'):
        assert needle in text, needle
    # a rate only when the work was long enough to time: a fraction of a second measures start-up costs
    assert ('MB/s' in text) == (s.seconds >= 1.0)
    assert verify_tokenizer_artifacts(tmp_path / 'job') == []


def test_an_unlisted_file_beside_a_manifest_is_not_loaded(tmp_path):
    "A tokenizer file that the folder's manifest.json does not list cannot be verified: refused, naming it."
    from transformer_nb.tokenizer import TokenizerError, build_from_artifacts
    (tmp_path / 'c.txt').write_text('the cat sat on the mat\n' * 50)
    train_bbpe([tmp_path / 'c.txt'], tmp_path / 'tok', vocab_size=300, show_progress=False)
    folder = tmp_path / 'tok'
    shutil.copy(folder / 'tokenizer.json', folder / 'other.json')   # same content, but nothing vouches for it
    assert 'tokenizer.json' in json.loads((folder / 'manifest.json').read_text())['artifacts']
    with pytest.raises(TokenizerError, match=r"other\.json: not listed in .*manifest\.json, so it cannot be verified"):
        build_from_artifacts(folder / 'other.json')
    assert build_from_artifacts(folder / 'tokenizer.json').get_vocab_size() > 0
    assert build_from_artifacts(folder / 'other.json', verify=False).get_vocab_size() > 0


# ---------------------------------------------------------------------------------------------
# The trainer learns from the documents `prepare` encodes, not from lines.

CODE = ''.join(f"def f{i}(x):\n    if x > {i}:\n        return x - {i}\n    return x + {i}\n\n" for i in range(300))


def test_trained_on_documents_learns_newline_indentation(tmp_path):
    """Pre-tokens that span a line end ('\\n    ' before indented code) only exist in whole documents: a tokenizer
    trained on indented code has merges for them, and encodes that code in fewer tokens than the bytes-per-line
    view would allow."""
    (tmp_path / 'code.txt').write_text(CODE)
    tok = train_bbpe([tmp_path / 'code.txt'], tmp_path / 't', vocab_size=400, show_progress=False)
    vocab = tok.get_vocab()
    assert 'ĊĠĠĠ' in vocab and 'ĊĠĠĠĠĠĠĠ' in vocab          # '\n   ' and '\n       ' (the next word takes a space)
    merges = (tmp_path / 't' / 'merges.txt').read_text(encoding='utf-8').splitlines()
    assert any(m.startswith('Ċ') and m.split(' ')[1].startswith('Ġ') for m in merges[1:])
    assert tok.decode(tok.encode(CODE).ids) == CODE


def test_training_texts_are_prepares_pieces(tmp_path):
    """The trainer reads every source through `source_pieces` with prepare's default piece size: the same texts."""
    import inspect
    from transformer_nb.data import prepare
    from transformer_nb.sources import resolve_corpus, source_pieces
    from transformer_nb.tokenizer import MAX_PIECE_CHARS, _training_files, iter_training_texts
    assert MAX_PIECE_CHARS == inspect.signature(prepare).parameters['max_doc_chars'].default
    (tmp_path / 'a.txt').write_text('first doc\n  indented\n\n\nsecond\r\ndoc\n')
    (tmp_path / 'b.jsonl').write_text(json.dumps({'text': 'a record\n\nwith a blank line'}) + '\n'
                                      + json.dumps({'text': '  '}) + '\n' + json.dumps({'text': 'last'}) + '\n')
    inputs = [tmp_path / 'a.txt', tmp_path / 'b.jsonl']
    files = _training_files(inputs, show_progress=False)
    want = [t for src in resolve_corpus(inputs) for t, _ in source_pieces(src, max_chars=MAX_PIECE_CHARS) if t]
    assert list(iter_training_texts(files)) == want == ['first doc\n  indented\n', 'second\ndoc\n',
                                                        'a record\n\nwith a blank line', 'last']


def test_max_lines_samples_whole_documents(tmp_path):
    p = tmp_path / 'docs.txt'
    p.write_text(''.join(f"doc {i}\n  line 2\n  line 3\n\n" for i in range(200)))
    from transformer_nb.tokenizer import _training_files, iter_training_texts
    files = _training_files([p], show_progress=False)
    for seed in (0, 1):
        texts = list(iter_training_texts(files, seed=seed, max_lines=100))
        assert sum(t.count('\n') for t in texts) == 100
        assert sum(t.startswith('doc ') and t.count('\n') == 3 for t in texts) >= 33   # whole documents
        assert texts == list(iter_training_texts(files, seed=seed, max_lines=100))
    assert list(iter_training_texts(files, seed=0, max_lines=100)) != list(iter_training_texts(files, seed=1,
                                                                                                max_lines=100))


# ---------------------------------------------------------------------------------------------
# Special-token files that open with '[' but are not JSON; lone surrogates.

def test_special_tokens_file_of_bracketed_names(tmp_path):
    p = tmp_path / 'special_tokens.txt'
    p.write_text('[PAD]\n[CLS]\n[SEP]\n[MASK]\n')
    assert read_special_tokens(p) == ['[PAD]', '[CLS]', '[SEP]', '[MASK]']
    p.write_text('  [PAD]\n<eos>\n')
    assert read_special_tokens(p) == ['[PAD]', '<eos>']
    # JSON arrays still read as JSON, and a broken one is still an error naming the position
    p.write_text('[\n  "<|endoftext|>", "[PAD]"\n]\n')
    assert read_special_tokens(p) == ['<|endoftext|>', '[PAD]']
    p.write_text('["<a>", \n')
    with pytest.raises(TokenizerError, match=r'special_tokens.txt:\d+:\d+: not a valid JSON array'):
        read_special_tokens(p)
    j = tmp_path / 'specials.json'
    j.write_text('[PAD]\n')                               # a .json file is JSON, whatever it holds
    with pytest.raises(TokenizerError, match='not a valid JSON array'):
        read_special_tokens(j)


def test_lone_surrogate_is_a_clear_error(toks):
    from transformer_nb.tokenizer import check_encodable
    assert check_encodable('plain 🙂 東京') == 'plain 🙂 東京'
    with pytest.raises(TokenizerError, match=r'^text: character 1 is a lone surrogate U\+D800'):
        check_encodable('a\ud800b')
    with pytest.raises(TokenizerError, match=r'^doc\.jsonl: character 4 is a lone surrogate U\+DE00'):
        check_encodable('🙂abc\ude00', 'doc.jsonl')
    with pytest.raises(TypeError):             # what the library itself does with one
        toks['json'].encode('a\ud800b')


def test_special_tokens_file_with_a_byte_order_mark(tmp_path):
    "A special-tokens file saved with a UTF-8 byte-order mark (as some editors write) reads as without one."
    from transformer_nb.tokenizer import read_special_tokens
    p = tmp_path / 'special_tokens.txt'
    p.write_bytes(b'\xef\xbb\xbf<pad>\n<bos>\n<eos>\n')
    assert read_special_tokens(p) == ['<pad>', '<bos>', '<eos>']
    p.write_bytes(b'\xef\xbb\xbf["<|endoftext|>", "<|pad|>"]')
    assert read_special_tokens(p) == ['<|endoftext|>', '<|pad|>']
