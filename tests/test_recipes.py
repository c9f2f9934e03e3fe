"""Every recipe in a config header and in the README's "Commands" block works as written (issue 18, item 1).

Each recipe is run in a temporary folder that holds a copy of `configs/` (so that the configs' `../runs/...`
paths land there) and a small made-up corpus, with only these changes to the commands:

- the corpus placeholder (`<your text files>`, `corpus.txt`) and the corpora the configs name (the built-in
  `shakespeare`, `../shared/data/tinyshakespeare.txt`) become that small corpus;
- `train` gets a few overrides that make it short (2 steps, short sequences, 1 validation batch, CPU, a small model), and
  `orchestrate` gets `--max-steps 2` (and the small corpus as `--input` where the recipe uses the built-in one);
- `tensorboard --logdir DIR` is not started: the test checks that DIR holds event files;
- `tnb bench` recipes are benchmarks, run by tests/test_bench.py; a config whose recipe is `torchrun` on
  8 GPUs (llama_1b.yaml) is not run here (tests/test_ddp.py runs torchrun and FSDP).
"""
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from faults import command, write_corpus
from transformer_nb.config import CORPUS_KEYWORDS

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / 'configs').glob('*.yaml'))
KNOWN = {'train', 'orchestrate', 'tnb', 'tensorboard', 'mkdir', 'torchrun'}
SHORT = ['scheduler.total_steps=2', 'scheduler.warmup_steps=0', 'data.sequence_length=32',
         'runtime.evaluation.max_batches=1', 'runtime.device=cpu',
         # a small model: the recipes' commands are what is tested, not their models (which take a minute to save)
         'model.hidden_size=64', 'model.intermediate_size=128', 'model.num_layers=1', 'model.num_attention_heads=2',
         'model.num_key_value_heads=null']


def header_commands(path: Path) -> list[str]:
    "The commands in a config's header comment: indented lines, backslash continuations joined."
    cmds, cur = [], ''
    for line in path.read_text().splitlines():
        if not line.startswith('#'):
            if line.strip() and line.strip() != '---': break
            continue
        m = re.match(r'#\s{4,}(\S.*)$', line)
        if not m: continue
        text = re.sub(r'\s+#.*$', '', m.group(1)) if ' # ' in m.group(1) else m.group(1)
        cur = (cur + ' ' + text.rstrip('\\').strip()).strip()
        if not text.endswith('\\'): cmds.append(cur); cur = ''
    return [c for c in cmds if c.split()[0] in KNOWN]


def readme_commands() -> list[str]:
    "The commands of the README's first shell block under '## Commands' (comment lines left out)."
    text = (ROOT / 'README.md').read_text()
    block = re.search(r'## Commands\s*```sh\n(.*?)```', text, re.S).group(1)
    return [l for l in block.splitlines() if l.strip() and not l.startswith('#')]


def run_recipe(cmds: list[str], work: Path, reads_builtin: bool):
    corpus = work / 'corpus.txt'
    for cmd in cmds:
        cmd = cmd.replace('<your text files>', 'corpus.txt')
        argv = shlex.split(cmd)
        if argv[:2] == ['tnb', 'bench']: continue
        if argv[0] == 'tensorboard':
            logdir = work / argv[argv.index('--logdir') + 1]
            assert list(logdir.glob('events.out.tfevents.*')), f"{cmd}: no TensorBoard events in {logdir}"
            continue
        if argv[0] in ('mkdir', 'cp') or '&&' in argv:
            r = subprocess.run(cmd, shell=True, cwd=work, capture_output=True, text=True)
            assert r.returncode == 0, f"{cmd}: {r.stderr}"
            continue
        argv = [str(corpus) if a in CORPUS_KEYWORDS else a for a in argv]     # the built-in corpora: the small one
        if argv[0] == 'tnb' and argv[1] in ('train', 'orchestrate'): argv = argv[1:]   # the same commands
        if argv[0] == 'train':
            argv += ['--override', *SHORT] + (['--override', f'data.train_shards=[{corpus}]'] if reads_builtin else [])
        if argv[0] == 'orchestrate':
            argv += ['--max-steps', '2'] + (['--input', str(corpus)] if '--input' not in argv else [])
        if argv[:2] == ['tnb', 'generate'] and '--max-new-tokens' in argv: argv[argv.index('--max-new-tokens') + 1] = '20'
        r = command(argv[0], *argv[1:], cwd=work, timeout=600)
        assert r.returncode == 0, f"{cmd} (as run: {shlex.join(argv)}) failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


@pytest.fixture
def work(tmp_path) -> Path:
    shutil.copytree(ROOT / 'configs', tmp_path / 'configs')
    write_corpus(tmp_path / 'corpus.txt')
    return tmp_path


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: p.name)
def test_config_header_recipe(config, work):
    cmds = [c for c in header_commands(config) if c.split()[:2] != ['tnb', 'bench']]
    if any(c.startswith('torchrun') for c in cmds):
        pytest.skip(f"{config.name}: a recipe for 8 GPUs (torchrun and FSDP are tested by tests/test_ddp.py)")
    assert any(c.startswith('train ') for c in cmds), f"{config.name}: the header never says how to train with it"
    text = config.read_text()
    builtin = '|'.join(re.escape(k) for k in CORPUS_KEYWORDS)
    run_recipe(cmds, work, reads_builtin=bool(re.search(rf'^\s+- "?({builtin})"?\s*(#.*)?$', text, re.M)))


def test_readme_commands(work):
    cmds = readme_commands()
    assert any(c.startswith('tnb train-tokenizer') for c in cmds) and any(c.startswith('orchestrate') for c in cmds)
    run_recipe(cmds, work, reads_builtin=False)


def test_missing_tokenizer_names_the_key_and_the_command(work):
    "`train` before its tokenizer exists: the error names the config key and the command that creates it."
    r = command('train', '--config', 'configs/m3_medium.yaml', cwd=work)
    assert r.returncode == 2, r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith('error:')]
    assert len(err) == 1 and 'tokenizer.tokenizer_json' in err[0] and 'tnb train-tokenizer --input' in err[0], r.stderr
    assert '--out runs/m3-medium/tokenizer' in err[0], err[0]


def test_local_yaml_is_the_local_profile():
    "configs/local.yaml trains with the settings of `orchestrate --profile local` (its paths aside)."
    from transformer_nb.config import config_from_dict, config_to_dict, load_config
    from transformer_nb.orchestrate import PROFILES
    yaml_cfg = config_to_dict(load_config(ROOT / 'configs' / 'local.yaml'))
    profile = config_to_dict(config_from_dict(PROFILES['local']['config']))

    def flat(d, prefix=''):
        for k, v in d.items():
            if isinstance(v, dict): yield from flat(v, f'{prefix}{k}.')
            else: yield f'{prefix}{k}', v
    paths = ('tokenizer.', 'data.train_shards', 'data.validation_shards', 'data.cache_dir', 'runtime.checkpoint.directory',
             'runtime.evaluation.best.directory', 'runtime.logging.tensorboard')
    a, b = dict(flat(yaml_cfg)), dict(flat(profile))
    differ = {k: (a[k], b[k]) for k in a if not k.startswith(paths) and a[k] != b.get(k)}
    assert not differ, f"configs/local.yaml differs from the local profile (yaml, profile): {differ}"
