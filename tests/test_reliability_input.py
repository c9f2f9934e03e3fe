"""Bad input, never a traceback (issue 7, item 5).

Property tests (hypothesis, derandomized: the same examples on every run) feed generated configs,
`--override`s and corpus files to the commands `train`, `validate-corpus`, `prepare-data` and
`train-tokenizer`. Every input is built to be wrong in one known way, so each must end with exit
status 2, exactly one stderr line starting `error:` that names the culprit (the key, the override or
the file), no traceback; and a pre-existing run directory (checkpoints, data cache, tokenizer, metrics)
that the configs point at, and that `train-tokenizer --out` / `prepare-data --out` write to, must be
byte-for-byte unchanged afterwards.

Configs: wrong types, unknown keys, negative / zero / out-of-range values, heads not dividing hidden,
kv heads not dividing heads, missing files, empty lists, random text and random bytes as the file.
Overrides: the same mistakes as `--override KEY=VALUE`, plus malformed overrides.
Corpus files: random bytes with an invalid UTF-8 sequence or a NUL in them, invalid UTF-8 in text
(lone continuation bytes, overlong forms, surrogates, a sequence cut at the end), NULs, empty and
blank-only files (a BOM included); and, once, a 10 MB single line.

Why most examples run in-process: a command in its own process costs 2-8 s on this machine (importing
torch), so hundreds of examples would take many minutes. The commands' `*_main(argv)` functions are
exactly what the console scripts call (`sys.exit(train_main())`), so calling them here with stdout and
stderr captured (and any exception escaping them counted as a traceback) checks the same code path.
What in-process calls can't see (the interpreter's own exit status and output, import-time warnings)
is checked by a handful of the same inputs run as real processes (`test_bad_input_in_real_processes`).
"""
import contextlib
import io
import json
import os
import shutil
import string
import traceback
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from faults import (assert_user_error, commands, config_dict, make_assets, print_summary, snapshot, tally,
                    train_in_process, write_config)
from transformer_nb import cli
from transformer_nb.config import ALIASES, CHOICES, schema_keys

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
COUNTS = {'configs': 0, 'overrides': 0, 'corpus_runs': 0, 'subprocess_runs': 0}


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Assets, a valid tiny config, and a pre-existing run directory (trained 2 steps) the bad inputs aim at."
    d = tmp_path_factory.mktemp('input')
    assets = make_assets(d / 'assets')
    run = d / 'run'
    base = config_dict(assets, run, hidden=32, steps=2, every=1, keep=3)
    base['data']['cache_dir'] = str(run / 'data')
    cfg = write_config(d / 'good.yaml', base)
    train_in_process(cfg)
    shutil.copytree(assets['tok'], run / 'tokenizer')           # train-tokenizer --out points here
    assert (run / 'checkpoints').is_dir() and list((run / 'data').iterdir())
    shutil.copytree(run, d / 'pristine')
    scratch = d / 'cwd'; scratch.mkdir()
    w = {'dir': d, 'assets': assets, 'run': run, 'base': base, 'cfg': cfg, 'before': snapshot(run), 'pristine': d / 'pristine',
         'bad': d / 'bad', 'scratch': scratch, 'n': 0}
    w['bad'].mkdir()
    yield w
    tally(tmp_path_factory, inputs_tried=sum(COUNTS.values()), inputs_configs=COUNTS['configs'],
          inputs_overrides=COUNTS['overrides'], inputs_corpus_command_runs=COUNTS['corpus_runs'],
          inputs_subprocess_runs=COUNTS['subprocess_runs'])
    print(f"\ninput test: {COUNTS}")
    print_summary(tmp_path_factory, 'input')
    assert snapshot(run) == w['before'], 'the run directory was changed'


def call(main, argv: list[str]) -> tuple[object, str, str]:
    "Run a command's main function in-process: (exit status, stdout, stderr); an escaping exception is a traceback."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        try: rc = main([str(a) for a in argv])
        except SystemExit as e: rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc(file=err); rc = 'exception'
    return rc, out.getvalue(), err.getvalue()


def check(world, main, argv, culprits):
    "The input must be refused with exit 2 and one line naming a culprit, and the run directory must be intact."
    cwd = os.getcwd()
    os.chdir(world['scratch'])          # (a config without a checkpoint directory would use ./runs/<name>)
    try: rc, out, err = call(main, argv)
    finally: os.chdir(cwd)
    intact = snapshot(world['run']) == world['before']
    if not intact:                      # put it back, so that one failure does not spoil the examples after it
        shutil.rmtree(world['run']); shutil.copytree(world['pristine'], world['run'])
    line = assert_user_error(rc, err, culprits, out)
    assert intact, f'the run directory was changed by {argv}'
    return line


def fresh(world, suffix: str) -> Path:
    world['n'] += 1
    return world['bad'] / f"bad{world['n']:04d}{suffix}"


# --- strategies: one known mistake each -----------------------------------------------------------------

INT_KEYS = ['model.hidden_size', 'model.intermediate_size', 'model.num_layers', 'model.num_attention_heads',
            'model.max_position_embeddings', 'data.batch_size', 'data.gradient_accumulation_steps',
            'scheduler.total_steps', 'scheduler.warmup_steps', 'runtime.seed', 'runtime.log_every_n_steps',
            'runtime.checkpoint.max_keep', 'runtime.evaluation.max_batches']
FLOAT_KEYS = ['model.attn_dropout', 'optimizer.learning_rate', 'optimizer.weight_decay', 'optimizer.beta1',
              'optimizer.epsilon', 'scheduler.min_lr']
BOOL_KEYS = ['model.bias', 'model.tie_embeddings', 'runtime.compile', 'runtime.logging.enable_stdout']
CHOICE_KEYS = ['model.norm', 'model.activation', 'scheduler.strategy', 'runtime.precision', 'runtime.device', 'model.rope_mode']
POSITIVE = {'model.hidden_size': int, 'model.intermediate_size': int, 'model.num_layers': int,
            'model.num_attention_heads': int, 'model.max_position_embeddings': int, 'data.batch_size': int,
            'data.gradient_accumulation_steps': int, 'scheduler.total_steps': int, 'runtime.log_every_n_steps': int,
            'runtime.checkpoint.max_keep': int, 'runtime.evaluation.max_batches': int,
            'optimizer.learning_rate': float, 'optimizer.epsilon': float, 'model.rope_theta': float, 'model.norm_eps': float}
NON_NEGATIVE = {'optimizer.weight_decay': float, 'scheduler.warmup_steps': int, 'scheduler.min_lr': float, 'runtime.seed': int}
UNIT = ['model.attn_dropout', 'model.residual_dropout', 'data.val_fraction', 'optimizer.beta1', 'optimizer.beta2']

words = st.from_regex(r'[g-mo-z][g-mo-z_]{0,9}', fullmatch=True)        # no 'e', 'n', 'a', 'f', 'i': never a number, nan or inf
ints = st.integers(-10**6, 10**6)
floats_ = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: x != int(x))
lists = st.lists(st.integers(0, 9), min_size=0, max_size=3)
dicts = st.dictionaries(words, st.integers(0, 9), min_size=1, max_size=2)
SECTIONS = ['', 'model', 'tokenizer', 'data', 'optimizer', 'scheduler', 'runtime', 'runtime.checkpoint',
            'runtime.evaluation', 'runtime.evaluation.best', 'runtime.logging']
VALID = set(schema_keys())


def _not_a_choice(key):
    ok = set(CHOICES[key]) | set(ALIASES.get(key, {}))
    return words.filter(lambda w: w.lower().replace('-', '_') not in ok)


KINDS = ['type', 'unknown', 'range', 'heads', 'kv_heads', 'missing', 'empty']


@st.composite
def mistakes(draw, bad_dir: Path, kind: str):
    "(changes {dotted key: value}, culprits): a valid config with these changes is wrong in one known way (`kind`)."
    if kind == 'type':
        group = draw(st.sampled_from(['int', 'float', 'bool', 'choice', 'list', 'section']))
        if group == 'int': k, v = draw(st.sampled_from(INT_KEYS)), draw(st.one_of(words, floats_, lists, dicts, st.booleans()))
        elif group == 'float': k, v = draw(st.sampled_from(FLOAT_KEYS)), draw(st.one_of(words, lists, dicts, st.booleans()))
        elif group == 'bool': k, v = draw(st.sampled_from(BOOL_KEYS)), draw(st.one_of(words, ints, floats_, lists, dicts))
        elif group == 'choice':
            k = draw(st.sampled_from(CHOICE_KEYS)); v = draw(st.one_of(_not_a_choice(k), lists, dicts))
        elif group == 'list': k, v = 'data.train_shards', draw(st.one_of(ints, dicts, st.lists(ints, min_size=1, max_size=2)))
        else: k, v = draw(st.sampled_from([s for s in SECTIONS if s])), draw(st.one_of(words, ints, st.lists(ints, min_size=1, max_size=2)))
        return {k: v}, [k]
    if kind == 'unknown':
        sec = draw(st.sampled_from(SECTIONS))
        name = draw(words.filter(lambda w: (f'{sec}.{w}' if sec else w) not in VALID))
        key = f'{sec}.{name}' if sec else name
        return {key: draw(st.integers(0, 9))}, [key]
    if kind == 'range':
        which = draw(st.sampled_from(['positive', 'non_negative', 'unit']))
        if which == 'positive':
            k = draw(st.sampled_from(sorted(POSITIVE)))
            v = draw(st.integers(-10**6, 0)) if POSITIVE[k] is int else draw(st.floats(-1e6, 0.0))
        elif which == 'non_negative':
            k = draw(st.sampled_from(sorted(NON_NEGATIVE)))
            v = draw(st.integers(-10**6, -1)) if NON_NEGATIVE[k] is int else draw(st.floats(-1e6, -1e-9))
        else:
            k = draw(st.sampled_from(UNIT)); v = draw(st.one_of(st.floats(1.0, 1e6), st.floats(-1e6, -1e-9)))
        return {k: v}, [k]
    if kind == 'heads':
        n = draw(st.integers(2, 64)); h = draw(st.integers(1, 512).filter(lambda h: h % n))
        return {'model.hidden_size': h, 'model.num_attention_heads': n, 'model.num_key_value_heads': None}, ['model.num_attention_heads']
    if kind == 'kv_heads':
        n = draw(st.integers(2, 16)); k = draw(st.integers(2, 16).filter(lambda k: n % k))
        return ({'model.hidden_size': n * 2 * draw(st.integers(1, 8)), 'model.num_attention_heads': n,
                 'model.num_key_value_heads': k}, ['model.num_key_value_heads'])
    if kind == 'missing':
        name = draw(words)
        k, v = draw(st.sampled_from([('tokenizer.tokenizer_json', f'{name}.json'), ('data.train_shards', [f'{name}.txt']),
                                     ('data.validation_shards', [f'{name}.txt']), ('tokenizer.special_tokens', f'{name}.txt')]))
        missing = bad_dir / 'missing'
        v = [str(missing / x) for x in v] if isinstance(v, list) else str(missing / v)
        return {k: v}, [f'missing/{name}']
    k, v = draw(st.sampled_from([('data.train_shards', []), ('data.train_shards', ['']), ('tokenizer.special_tokens', []),
                                 ('tokenizer.special_tokens', [''])]))
    return {k: v}, [k, 'special tokens'] if 'special' in k else [k]


def apply(d: dict, changes: dict) -> dict:
    d = json.loads(json.dumps(d))
    for key, v in changes.items():
        *path, last = key.split('.')
        sec = d
        for p in path: sec = sec.setdefault(p, {})
        sec[last] = v
    return d


# --- configs and overrides --------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', KINDS)
@settings(max_examples=18, **SETTINGS)
@given(data=st.data())
def test_bad_configs(world, kind, data):
    changes, culprits = data.draw(mistakes(world['bad'], kind))
    path = write_config(fresh(world, '.yaml'), apply(world['base'], changes))
    COUNTS['configs'] += 1
    check(world, cli.train_main, ['--config', path], culprits)


@settings(max_examples=25, **SETTINGS)
@given(data=st.data(), text=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_garbage_config_files(world, data, text):
    "Random text or bytes as the config file: refused naming the file (or, when it parses as sections, what is missing)."
    path = fresh(world, '.yaml')
    path.write_bytes(text.encode('utf-8') if isinstance(text, str) else text)
    COUNTS['configs'] += 1
    check(world, cli.train_main, ['--config', path], [path.name, 'tokenizer', 'unknown key'])


@pytest.mark.parametrize('kind', KINDS)
@settings(max_examples=18, **SETTINGS)
@given(data=st.data())
def test_bad_overrides(world, kind, data):
    changes, culprits = data.draw(mistakes(world['bad'], kind))
    ov = [f'{k}={json.dumps(v)}' for k, v in changes.items()]
    COUNTS['overrides'] += 1
    check(world, cli.train_main, ['--config', world['cfg'], *[a for o in ov for a in ('--override', o)]], culprits)


def test_missing_config_file(world):
    for name in ('missing.yaml', 'no/such/dir/run.yaml', 'x.toml', 'x.json'):
        COUNTS['configs'] += 1
        check(world, cli.train_main, ['--config', world['bad'] / 'nowhere' / name, '--resume'], [name])
    COUNTS['configs'] += 1
    check(world, cli.train_main, ['--config', world['bad']], [str(world['bad'])])        # a directory


printable = st.text(st.characters(blacklist_categories=('Cc', 'Cs', 'Zl', 'Zp')), max_size=30)


@settings(max_examples=60, **SETTINGS)
@given(text=st.one_of(
    printable.filter(lambda t: '=' not in t and not t.startswith('-') and t.strip()),                 # no KEY=VALUE
    st.tuples(st.sampled_from(['model..hidden_size', 'model.hidden_size[0]', 'data.train_shards[7]', 'model.hidden_size.x',
                               '.model', 'model.', 'data.train_shards[x]', '[0]', 'runtime.checkpoint[0].x']),
              printable.filter(lambda t: '\\' not in t)).map('='.join),
    st.tuples(st.sampled_from(['model.hidden_size', 'optimizer.learning_rate', 'runtime.checkpoint']),
              st.sampled_from(['[1, 2', '{a: ', '"unclosed', "'", '!!python/object/apply:os.system ["true"]', '*x', '&a [*a]'])).map('='.join)))
def test_malformed_overrides(world, text):
    COUNTS['overrides'] += 1
    check(world, cli.train_main, ['--config', world['cfg'], '--override', text], ['--override', text.partition('=')[0].strip() or text])


# --- corpus files -----------------------------------------------------------------------------------------

INVALID_UTF8 = [b'\xff', b'\xfe', b'\x80', b'\xbf', b'\xc3(', b'\xc0\xaf', b'\xe0\x80\xaf', b'\xed\xa0\x80', b'\xf8\x88\x80\x80\x80',
                b'\xf4\x90\x80\x80']


@st.composite
def bad_corpus(draw):
    "Bytes of a corpus file that must be refused."
    kind = draw(st.sampled_from(['random_bytes', 'invalid_utf8', 'nul', 'truncated', 'empty', 'blank']))
    text = draw(st.text(max_size=400)).encode('utf-8')
    at = draw(st.integers(0, len(text)))
    while at < len(text) and (text[at] & 0xC0) == 0x80: at += 1        # (insert between characters)
    if kind == 'random_bytes':
        raw = draw(st.binary(min_size=0, max_size=400)); at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b'\x00', b'\xff', b'\xc3('])) + raw[at:]
    if kind == 'invalid_utf8': return text[:at] + draw(st.sampled_from(INVALID_UTF8)) + text[at:]
    if kind == 'nul': return text[:at] + b'\x00' + text[at:]
    if kind == 'truncated': return text + draw(st.sampled_from([b'\xc3', b'\xe2\x82', b'\xf0\x9f\x98']))
    if kind == 'empty': return b''
    return draw(st.sampled_from([b'', b'\xef\xbb\xbf'])) + draw(st.text(' \t\n\r', max_size=50)).encode()


def corpus_runs(world, path: Path, run: Path | None = None, cfg: Path | None = None):
    "The four commands that read a corpus, each aimed at the existing run directory."
    tok, run, cfg = world['assets']['tok'], run or world['run'], cfg or world['cfg']
    return [(cli.validate_corpus_main, [path]),
            (cli.train_tokenizer_main, ['--input', path, '--out', run / 'tokenizer', '--vocab-size', 300, '--no-progress']),
            (cli.prepare_data_main, ['--tokenizer', tok, '--input', path, '--out', run / 'data', '--no-progress']),
            (cli.train_main, ['--config', cfg, '--override', f'data.train_shards=[{json.dumps(str(path))}]'])]


@settings(max_examples=40, **SETTINGS)
@given(raw=bad_corpus())
def test_bad_corpus_files(world, raw):
    path = fresh(world, '.txt')
    path.write_bytes(raw)
    for main, argv in corpus_runs(world, path):
        COUNTS['corpus_runs'] += 1
        check(world, main, argv, [path.name])


def test_ten_megabyte_single_line(world):
    "10 MB of words on one line (no newline): not a usable corpus; every command refuses it naming the file."
    path = fresh(world, '.txt')
    with open(path, 'w') as f:
        line = ' '.join(string.ascii_lowercase[i % 26] * (1 + i % 7) for i in range(2_600_000))
        f.write(line[:10_000_000])
    # on a copy of the run directory, so that a command wrongly accepting the file can't spoil the other tests
    run = world['dir'] / 'run_10mb'
    shutil.copytree(world['run'], run)
    cfg = write_config(world['dir'] / 'run_10mb.yaml', apply(world['base'], {
        'runtime.checkpoint.directory': str(run / 'checkpoints'), 'data.cache_dir': str(run / 'data')}))
    shutil.copytree(run, world['dir'] / 'pristine_10mb')
    w = dict(world, run=run, before=snapshot(run), pristine=world['dir'] / 'pristine_10mb')
    failures = []
    for main, argv in corpus_runs(w, path, run, cfg):      # train-tokenizer second: slow when it (wrongly) accepts the file
        COUNTS['corpus_runs'] += 1
        try: check(w, main, argv, [path.name])
        except AssertionError as e:
            lines = str(e).splitlines()
            failures.append(f"{main.__name__}: {lines[0]}; stderr: " + ' | '.join(l for l in lines if l.startswith(('error:', 'warning:'))))
    assert not failures, failures


def test_a_long_line_is_measured_once(world):
    "A 5,000,000-character line (longer than validate_corpus's read chunks) is reported as one line of that length."
    from transformer_nb.data import CorpusError, validate_corpus
    path = fresh(world, '.txt')
    path.write_text('KING.\n' + 'x' * 5_000_000 + '\n\nQUEEN.\nyes\n')
    try: msg = ' '.join(validate_corpus([path]).warnings)      # a warning, or an error (too long to be text)
    except CorpusError as e: msg = str(e)
    assert '5,000,000' in msg and ('1 line(s)' in msg or 'line 2 ' in msg), msg
    COUNTS['corpus_runs'] += 1


# --- a few of the same, as real processes -------------------------------------------------------------------

def test_bad_input_in_real_processes(world):
    bad = world['bad']
    utf8 = bad / 'real_invalid_utf8.txt'; utf8.write_bytes(b'KING.\nhello \xc3( world\n')
    nul = bad / 'real_nul.txt'; nul.write_bytes(b'KING.\nhello\x00world\n')
    empty = bad / 'real_empty.txt'; empty.write_bytes(b'')
    runs = [(('train', ['--config', world['cfg'], '--override', 'model.num_key_value_heads=3'],
              {'cwd': world['scratch']}), ['model.num_key_value_heads']),
            (('tnb', ['validate-corpus', utf8]), [utf8.name]),
            (('tnb', ['train-tokenizer', '--input', nul, '--out', world['run'] / 'tokenizer', '--no-progress']), [nul.name]),
            (('tnb', ['prepare-data', '--tokenizer', world['assets']['tok'], '--input', empty, '--out', world['run'] / 'data',
                               '--no-progress']), [empty.name])]
    results = commands([c for c, _ in runs], parallel=4)
    for (c, culprits), r in zip(runs, results):
        COUNTS['subprocess_runs'] += 1
        assert_user_error(r.returncode, r.stderr, culprits, r.stdout)
    assert snapshot(world['run']) == world['before']


# --- values that passed the config checks and failed later, and a damaged data manifest ----------------------

@pytest.mark.parametrize('changes, culprit', [
    ({'data.val_fraction': 0}, 'data.val_fraction must be in (0, 1)'),
    ({'model.rope_theta': 0.5}, 'model.rope_theta must be > 1'),
    ({'model.rope_theta': 1}, 'model.rope_theta must be > 1'),
    ({'model.rope_mode': 'ntk', 'model.rope_scale': 4, 'model.rotary_dim': 2}, "model.rope_mode 'ntk'"),
])
def test_values_that_failed_later_are_refused_at_load(world, changes, culprit):
    path = write_config(fresh(world, '.yaml'), apply(world['base'], changes))
    check(world, cli.train_main, ['--config', path], [f'{path}: {culprit}'])


@pytest.mark.parametrize('damage, key', [
    (lambda m: m.pop('val'), "'val'"),
    (lambda m: m['train'].pop('num_documents'), "'train.num_documents'"),
    (lambda m: m['train']['shards'][0].pop('bytes'), "'train.shards[0].bytes'"),
])
def test_damaged_data_manifest_is_one_line(world, damage, key):
    "A prepared-data manifest that parses but lacks a key: one line naming the file and the key, not a KeyError."
    cache = fresh(world, '-data')
    shutil.copytree(world['run'] / 'data', cache)
    (manifest,) = cache.glob('*/manifest.json')
    m = json.loads(manifest.read_text()); damage(m); manifest.write_text(json.dumps(m))
    path = write_config(fresh(world, '.yaml'), apply(world['base'], {'data.cache_dir': str(cache)}))
    line = check(world, cli.train_main, ['--config', path], [f'{manifest}: no {key} key'])
    assert 'prepare the data again' in line
