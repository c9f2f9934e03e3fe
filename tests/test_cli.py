"""The command-line tools, run as a user runs them: as separate processes through the console scripts.

Covers: `tnb --help` (every command listed), `tnb --version`, `python -m transformer_nb`, the console
scripts pyproject.toml installs (`tnb`, `train`, `orchestrate` only); `--help` of every command; user
errors (missing or wrong config, bad override, missing / binary / non-UTF-8 / empty corpus, bad
tokenizer or checkpoint paths, contradictory flags) exit with status 2 and exactly one `error: ...`
line on stderr naming the culprit, never a traceback; `train --print-config`; a tiny end-to-end
`orchestrate` run produces the run-directory layout, `--resume` continues it, `train --config
<run>/training.yaml --resume` continues it too, `tnb generate` streams text from it; and
`tnb train-tokenizer`, `tnb prepare-data`, `tnb validate-corpus` work on a small corpus. CPU only, no network.
"""
import json
import os
import random
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import yaml

import transformer_nb
from faults import SCRIPTS, argv_of, in_process
from transformer_nb.cli import COMMANDS

# a tiny model: every orchestrate/train call in this file trains it for a handful of steps
TINY = ['--vocab-size', '300', '--no-progress', '--prompt', 'the king', '--override',
        'model.hidden_size=32', 'model.intermediate_size=64', 'model.num_layers=1', 'model.max_position_embeddings=64',
        'data.sequence_length=64', 'data.batch_size=4', 'runtime.evaluation.max_batches=2', 'runtime.device=cpu']


def run(cmd, *args, cwd=None, timeout=120):
    "Run console script `cmd` (`tnb`, `train`, `orchestrate`; without the script, its main function) and return the result."
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='2')
    return subprocess.run(argv_of(cmd, *args), capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def assert_user_error(r, culprit):
    "Status 2, one stderr line 'error: ...' naming `culprit`, no traceback."
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert 'Traceback' not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith('error: '), lines
    assert culprit in lines[0], (culprit, lines[0])


WORDS = ("the king queen lord lady good night day love death sword crown fair sweet heart blood "
         "speak come go stay what why thou thee thy shall will not never ever my our your").split()


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    "About 60 kB of made-up verse: 400 short documents separated by blank lines (deterministic)."
    d = tmp_path_factory.mktemp('corpus')
    rng = random.Random(0)
    docs = []
    for i in range(400):
        speaker = rng.choice(['KING.', 'QUEEN.', 'LORD.', 'LADY.'])
        lines = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + rng.choice(',.;!?')
                 for _ in range(rng.randint(1, 4))]
        docs.append(speaker + '\n' + '\n'.join(lines))
    p = d / 'verse.txt'
    p.write_text('\n\n'.join(docs) + '\n', encoding='utf-8')
    return p


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp('bad')
    (d / 'binary.txt').write_bytes(b'hello\x00world\n')
    (d / 'latin1.txt').write_bytes('caf\xe9 au lait\n'.encode('latin-1'))
    (d / 'empty.txt').write_bytes(b'')
    (d / 'notes').mkdir()
    (d / 'notes' / 'logo.png').write_bytes(b'\x89PNG not text')   # no corpus file here (.md would be one)
    return d


@pytest.fixture(scope='module')
def configs(tmp_path_factory, corpus):
    d = tmp_path_factory.mktemp('configs')
    good = ("model: {hidden_size: 32, intermediate_size: 64, num_layers: 1, num_attention_heads: 2, "
            "max_position_embeddings: 64}\n"
            f"data: {{train_shards: ['{corpus}'], batch_size: 4}}\n"
            "scheduler: {total_steps: 5}\n"
            "tokenizer: {tokenizer_json: tok/tokenizer.json}\n")
    (d / 'good.yaml').write_text(good)
    (d / 'typo.yaml').write_text(good.replace('hidden_size', 'hiden_size'))
    (d / 'badtype.yaml').write_text(good.replace('total_steps: 5', 'total_steps: many'))
    return d


# --- help ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(COMMANDS))
def test_help(name):
    "Each command's help (in this process; the console scripts' own --help below)."
    r = in_process('tnb', name, '--help')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f'usage: tnb {name}'), r.stdout[:200]
    assert 'examples:' in r.stdout and r.stderr == ''


@pytest.mark.parametrize('cmd', ['train', 'orchestrate'])
def test_help_of_the_original_commands(cmd):
    r = run(cmd, '--help')
    assert r.returncode == 0 and r.stdout.startswith(f'usage: {cmd} ') and 'examples:' in r.stdout, r.stderr


def test_tnb_help_lists_every_command():
    r = run('tnb', '--help')
    assert r.returncode == 0 and r.stdout.startswith('usage: tnb '), r.stderr
    listed = {l.split()[0] for l in r.stdout.split('Commands:')[1].split('\n\n')[1].splitlines()}
    assert listed == set(COMMANDS) == {'train', 'orchestrate', 'generate', 'evaluate', 'train-tokenizer', 'prepare-data',
                                       'validate-corpus', 'bench', 'estimate-memory', 'export-hf'}, listed
    assert not [l for l in r.stdout.split('\nexamples:')[0].splitlines() if len(l) > 80]
    for bad in ([], ['no-such-command']):
        r = run('tnb', *bad)
        assert r.returncode == 2 and 'usage: tnb' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_tnb_version():
    r = run('tnb', '--version')
    assert r.returncode == 0 and r.stdout == f'transformer_nb {transformer_nb.__version__}\n', (r.stdout, r.stderr)


def test_python_m_transformer_nb(corpus):
    m = [sys.executable, '-m', 'transformer_nb']
    r = subprocess.run([*m, '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith('usage: python -m transformer_nb'), r.stderr
    assert all(name in r.stdout for name in COMMANDS)
    r = subprocess.run([*m, 'validate-corpus', corpus], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'corpus OK' in r.stdout, r.stderr
    r = subprocess.run([*m, 'generate', '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith('usage: python -m transformer_nb generate'), r.stderr


def test_console_scripts():
    "Only `tnb` and the original project's two commands go on a user's PATH."
    assert SCRIPTS == {'tnb': 'transformer_nb.cli:main', 'train': 'transformer_nb.cli:train_main',
                       'orchestrate': 'transformer_nb.cli:orchestrate_main'}
    for old in ('generate', 'evaluate', 'train-tokenizer', 'prepare-data', 'validate-corpus', 'tnb-bench',
                'estimate-memory', 'export-hf'):
        assert old not in SCRIPTS


def test_usage_error_exits_2():
    r = run('train')                                # --config is required: argparse's usage error
    assert r.returncode == 2 and 'usage: train' in r.stderr and '--config' in r.stderr


def test_mains_return_their_status():
    "In this process the main functions return the status of --help, --version and usage errors (no SystemExit)."
    import contextlib, io
    from transformer_nb.cli import main, orchestrate_main, train_main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rcs = [train_main(['--bogus']), train_main([]), orchestrate_main(['--help']), main([]), main(['no-such-command']),
               main(['--version']), main(['generate', '--bogus'])]
    assert rcs == [2, 2, 0, 2, 2, 0, 2], rcs
    assert err.getvalue().count('usage: ') == 5 and out.getvalue().startswith('usage: orchestrate'), err.getvalue()


# --- user errors: exit 2, one line naming the culprit ---------------------------------------------

def test_config_errors(configs, tmp_path):
    "The console script once, then the same command in this process (a user error is found before any work)."
    assert_user_error(run('train', '--config', tmp_path / 'missing.yaml'), 'missing.yaml')
    assert_user_error(in_process('train', '--config', configs / 'typo.yaml'), 'hiden_size')
    assert_user_error(in_process('train', '--config', configs / 'badtype.yaml'), 'scheduler.total_steps')
    r = in_process('train', '--config', configs / 'good.yaml', '--override', 'optimizer.learning_rat=1e-3')
    assert_user_error(r, 'learning_rat')
    assert 'learning_rate' in r.stderr                             # the nearest valid key is named
    assert_user_error(in_process('train', '--config', configs / 'good.yaml', '--override', 'model.hidden_size=big'), 'model.hidden_size')
    assert_user_error(in_process('train', '--config', configs / 'good.yaml', '--override', 'model.hidden_size'), 'model.hidden_size')
    # a valid config whose tokenizer is not there
    assert_user_error(in_process('train', '--config', configs / 'good.yaml'), 'tokenizer')


@pytest.mark.parametrize('name', ['binary.txt', 'latin1.txt', 'empty.txt', 'missing.txt', 'notes'])
def test_corpus_errors(bad_files, name):
    "The console script for the first file; in this process for the others."
    assert_user_error((run if name == 'binary.txt' else in_process)('tnb', 'validate-corpus', bad_files / name), name)


def test_corpus_errors_in_other_commands(bad_files, tmp_path):
    assert_user_error(run('tnb', 'train-tokenizer', '--input', bad_files / 'binary.txt', '--out', tmp_path / 't'), 'binary.txt')
    assert_user_error(run('orchestrate', '--profile', 'local', '--input', bad_files / 'latin1.txt',
                          '--run-dir', tmp_path / 'r'), 'latin1.txt')
    assert_user_error(run('tnb', 'prepare-data', '--tokenizer', tmp_path / 'nope', '--input', bad_files / 'empty.txt',
                          '--out', tmp_path / 'd'), 'nope')


def test_path_and_flag_errors(tmp_path, corpus):
    "The console script once, then the same commands in this process (each user error comes before any work)."
    assert_user_error(run('tnb', 'generate', '--checkpoint', tmp_path / 'nope', '--prompt', 'x'), 'nope')
    (tmp_path / 'empty_dir').mkdir()
    assert_user_error(in_process('tnb', 'generate', '--checkpoint', tmp_path / 'empty_dir', '--prompt', 'x'), 'empty_dir')
    assert_user_error(in_process('tnb', 'generate', '--run-dir', tmp_path / 'empty_dir', '--prompt', 'x'), 'empty_dir')
    assert_user_error(in_process('orchestrate', '--profile', 'local', '--input', corpus, '--run-dir', tmp_path / 'r',
                                 '--skip-tokenizer'), '--skip-tokenizer')
    assert_user_error(in_process('orchestrate', '--profile', 'local', '--input', corpus, '--run-dir', tmp_path / 'r',
                                 '--tokenizer-json', tmp_path / 'no_tok'), 'no_tok')
    assert_user_error(in_process('orchestrate', '--profile', 'local', '--input', corpus, '--run-dir', tmp_path / 'r',
                                 '--override', 'model.num_layer=1'), 'model.num_layer')
    assert_user_error(in_process('orchestrate', '--profile', 'local', '--run-dir', tmp_path / 'r', '--resume',
                                 '--overwrite'), '--overwrite')
    assert_user_error(in_process('orchestrate', '--profile', 'local', '--run-dir', tmp_path / 'r', '--skip-tokenizer',
                                 '--force-retrain-tokenizer'), '--force-retrain-tokenizer')


def test_train_print_config(configs, tmp_path):
    "`train --print-config` (and `tnb train --print-config`): the resolved config as YAML, nothing trained or written."
    for cmd in (['train'], ['tnb', 'train']):
        r = run(*cmd, '--config', configs / 'good.yaml', '--override', 'data.batch_size=2', 'model.num_layers=3',
                '--print-config', cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        d = yaml.safe_load(r.stdout)
        assert d['data']['batch_size'] == 2 and d['model']['num_layers'] == 3 and d['scheduler']['total_steps'] == 5
        assert d['tokenizer']['tokenizer_json'] == str(configs / 'tok' / 'tokenizer.json')   # resolved against the file
        assert list(tmp_path.iterdir()) == [] and not (configs / 'checkpoints').exists()
    assert_user_error(run('train', '--config', configs / 'good.yaml', '--override', 'data.batch_sise=2', '--print-config'),
                      'data.batch_sise')


# --- the small commands ---------------------------------------------------------------------------

def test_validate_tokenizer_prepare(corpus, tmp_path):
    r = run('tnb', 'validate-corpus', corpus)
    assert r.returncode == 0, r.stderr
    assert 'verse.txt' in r.stdout and 'corpus OK' in r.stdout and '400' in r.stdout   # 400 documents

    r = run('tnb', 'train-tokenizer', '--input', corpus, '--out', tmp_path / 'tok', '--vocab-size', '300', '--no-progress')
    assert r.returncode == 0, r.stderr
    for f in ('tokenizer.json', 'vocab.json', 'merges.txt', 'manifest.json'): assert (tmp_path / 'tok' / f).is_file()
    assert 'vocabulary' in r.stdout and 'compression' in r.stdout

    r = run('tnb', 'prepare-data', '--tokenizer', tmp_path / 'tok', '--input', corpus, '--out', tmp_path / 'data',
            '--val-fraction', '0.2', '--seed', '3', '--no-progress')
    assert r.returncode == 0, r.stderr
    (folder,) = [p for p in (tmp_path / 'data').iterdir() if p.name.startswith('tokens-')]
    man = json.loads((folder / 'manifest.json').read_text())
    assert man['train']['num_tokens'] > 0 and man['val']['num_tokens'] > 0
    assert man['split']['val_fraction'] == 0.2
    r = run('tnb', 'prepare-data', '--tokenizer', tmp_path / 'tok', '--input', corpus, '--out', tmp_path / 'data',
            '--val-fraction', '0.2', '--seed', '3', '--no-progress')
    assert r.returncode == 0 and 'reused' in r.stdout                                    # a cache


# --- end to end: orchestrate, resume, train --resume, generate ------------------------------------

@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, corpus):
    d = tmp_path_factory.mktemp('runs') / 'tiny'
    r = run('orchestrate', '--profile', 'local', '--input', corpus, '--run-dir', d, '--max-steps', '12', *TINY)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d


def test_orchestrate_layout(run_dir):
    L = run_dir
    assert (L / 'special_tokens.txt').read_text().split() == ['<pad>', '<bos>', '<eos>']
    for f in ('tokenizer.json', 'vocab.json', 'merges.txt', 'manifest.json'): assert (L / 'tokenizer' / f).is_file()
    cfg = (L / 'training.yaml').read_text()
    assert 'directory: checkpoints' in cfg and 'total_steps: 12' in cfg and 'hidden_size: 32' in cfg
    assert list((L / 'data').glob('tokens-*/manifest.json'))
    ck = sorted((L / 'checkpoints').glob('step_*'))
    assert ck and ck[-1].name == 'step_000000000012'
    for f in ('model.safetensors', 'optimizer.safetensors', 'trainer_state.json', 'manifest.json', 'training.yaml'):
        assert (ck[-1] / f).is_file(), f
    assert (ck[-1] / 'tokenizer' / 'tokenizer.json').is_file()           # self-contained
    assert list((L / 'best').glob('step_*'))
    assert list((L / 'tensorboard').glob('events.out.tfevents.*'))
    samples = (L / 'samples.txt').read_text()
    assert "prompt 'the king'" in samples and len(samples) > 100


def test_orchestrate_refuses_to_clobber(run_dir, corpus):
    assert_user_error(run('orchestrate', '--profile', 'local', '--input', corpus, '--run-dir', run_dir, *TINY), '--resume')


def test_generate(run_dir):
    r = run('tnb', 'generate', '--run-dir', run_dir, '--prompt', 'KING.\\n', '--max-new-tokens', '20', '--seed', '1', '--threads', '1')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('KING.\n') and len(r.stdout) > len('KING.\n') + 5
    assert 'tokens/s' in r.stderr                                        # details on stderr, text on stdout
    assert 'generate: 20 tokens in ' in r.stderr and 'tokens/s on 1 thread' in r.stderr, r.stderr   # the count, the threads
    ck = sorted((run_dir / 'checkpoints').glob('step_*'))[-1]
    r = run('tnb', 'generate', '--checkpoint', ck, '--prompt', 'the', '--max-new-tokens', '15', '--temperature', '0',
            '--no-echo', '--no-kv-cache', '--threads', '1')
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert ck.name in r.stderr and 'no KV cache' in r.stderr



def test_generate_compile(run_dir):
    "--compile (static KV cache + torch.compile'd step) gives the same greedy text as the eager cached and uncached loops."
    ck = sorted((run_dir / 'checkpoints').glob('step_*'))[-1]
    common = ('--checkpoint', ck, '--prompt', 'the', '--max-new-tokens', '24', '--temperature', '0', '--no-echo',
              '--threads', '1')
    outs = [run('tnb', 'generate', *common, *extra) for extra in ((), ('--compile',), ('--no-kv-cache',))]
    for r in outs: assert r.returncode == 0, r.stderr
    assert outs[0].stdout == outs[1].stdout == outs[2].stdout
    assert 'compiled' in outs[1].stderr
    assert_user_error(run('tnb', 'generate', *common, '--compile', '--no-kv-cache'), '--compile needs the KV cache')

def test_resume(run_dir, corpus):
    r = run('orchestrate', '--profile', 'local', '--input', corpus, '--run-dir', run_dir, '--max-steps', '16',
            '--resume', *TINY)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'resumed from' in r.stdout and 'reusing' in r.stdout          # checkpoint, tokenizer reused
    assert '(resumed)' in r.stdout and 'validation     before' not in r.stdout   # the first eval is not 'before'
    assert (run_dir / 'checkpoints' / 'step_000000000016').is_dir()
    # train with the run's own config continues the same run
    r = run('train', '--config', run_dir / 'training.yaml', '--resume', '--override', 'scheduler.total_steps=18',
            '--threads', '1')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'resumed from' in r.stdout and 'step_000000000016' in r.stdout
    assert (run_dir / 'checkpoints' / 'step_000000000018').is_dir()


def test_train_lr_find_leaves_no_trace(run_dir):
    "`train --lr-find` prints a suggestion from the range test and changes nothing in the run directory."
    tree = lambda: {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in sorted(run_dir.rglob('*'))}
    before = tree()
    r = run('train', '--config', run_dir / 'training.yaml', '--lr-find', '--lr-find-steps', '25', '--threads', '1')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'suggested learning rate' in r.stdout and '--override optimizer.learning_rate=' in r.stdout
    assert tree() == before
    assert_user_error(run('train', '--config', run_dir / 'training.yaml', '--lr-find', '--resume'), '--lr-find')


def test_bench_flag_errors():
    "A bad --peak-sizes is one line naming the flag (not a traceback); --override takes several, as in train."
    assert_user_error(run('tnb', 'bench', '--peak-sizes', '1024', 'abc'), '--peak-sizes')
    from transformer_nb.cli import bench_parser
    assert bench_parser().parse_args(['--override', 'a=1', 'b=2', '--override', 'c=3']).override == ['a=1', 'b=2', 'c=3']


def test_bench_flags_of_the_other_mode_are_refused():
    "A speed flag with --quality (or a quality flag without it) would be ignored: one line naming it, exit 2."
    assert_user_error(in_process('tnb', 'bench', '--quality', '--precision', 'bf16', '--steps', '3'),
                      '--steps, --precision: not used with --quality')
    assert_user_error(in_process('tnb', 'bench', '--seeds', '5'), '--seeds: not used without --quality')


def test_bench_counts_must_be_positive():
    "--repeats 0 or --new-tokens 0 would end in a traceback inside a part: one line naming the flag instead."
    assert_user_error(in_process('tnb', 'bench', '--only', 'generate', '--repeats', '0'), '--repeats must be >= 1')
    assert_user_error(in_process('tnb', 'bench', '--only', 'generate', '--new-tokens', '0'), '--new-tokens must be >= 1')
    assert_user_error(in_process('tnb', 'bench', '--only', 'generate', '--prompt-len', '0'), '--prompt-len must be >= 1')
