"""The documentation site builds without Quarto, and what it builds is whole.

Builds the site from the notebooks into a temporary folder with `tools/build_docs.py` (nbdev's
notebook processing, then MkDocs) and checks that every notebook has a page in the sidebar, that
every internal link, anchor and image resolves, and that no page shows an unprocessed nbdev
directive or a Python traceback.
"""
import subprocess, sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Page(HTMLParser):
    "Collects the links, image sources and element ids of one HTML page."
    def __init__(self):
        super().__init__()
        self.links, self.images, self.ids, self.nav = [], [], set(), []
        self._in_nav = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'nav' and 'md-nav--primary' in (a.get('class') or ''): self._in_nav += 1
        elif tag == 'nav' and self._in_nav: self._in_nav += 1
        if tag == 'a' and a.get('href'):
            self.links.append(a['href'])
            if self._in_nav: self.nav.append(a['href'])
        if tag == 'img' and a.get('src'): self.images.append(a['src'])

    def handle_endtag(self, tag):
        if tag == 'nav' and self._in_nav: self._in_nav -= 1


def is_external(url):
    return urlsplit(url).scheme in ('http', 'https', 'mailto', 'data', 'javascript')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_docs.py'), '--out', str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f'docs build failed:\n{r.stdout}\n{r.stderr}'
    pages = {}
    for html in out.rglob('*.html'):
        p = Page()
        text = html.read_text(encoding='utf-8')
        p.feed(text)
        pages[html] = (p, text)
    return out, pages


def test_every_notebook_has_a_page(site):
    out, pages = site
    nbs = sorted(p.stem for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))
    assert nbs, 'no notebooks found'
    missing = [nb for nb in nbs if not (out / f'{nb}.html').exists()]
    assert not missing, f'notebooks without a page: {missing}'
    # the sidebar of the landing page links every page
    nav = {urlsplit(h).path for h in pages[out / 'index.html'][0].nav}
    assert {f'{nb}.html' for nb in nbs} <= nav | {'.', './'} | {'index.html'}, nav


def test_internal_links_and_images_resolve(site):
    out, pages = site
    broken = []
    for html, (p, _) in pages.items():
        if html.name == '404.html': continue
        for url in p.links + p.images:
            if is_external(url) or url.startswith('#') and url[1:] in p.ids or url == '#': continue
            parts = urlsplit(url)
            target = html if not parts.path else (html.parent / unquote(parts.path)).resolve()
            if target.is_dir(): target = target / 'index.html'
            if not target.exists():
                broken.append(f'{html.name}: {url}'); continue
            if parts.fragment and target.suffix == '.html':
                ids = pages[target][0].ids if target in pages else set()
                if unquote(parts.fragment) not in ids: broken.append(f'{html.name}: {url} (no such anchor)')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


def test_images_are_real(site):
    out, pages = site
    pngs = list(out.rglob('*_files/*.png'))
    for png in pngs: assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png


def test_no_directives_or_tracebacks(site):
    out, pages = site
    bad = []
    for html, (_, text) in pages.items():
        if '#| export' in text or '#|export' in text: bad.append(f'{html.name}: unrendered #| export')
        if 'Traceback (most recent call last)' in text: bad.append(f'{html.name}: a Python traceback')
    assert not bad, '\n'.join(bad)


def test_api_docs_for_exported_functions(site):
    out, pages = site
    # every exported name of the config module gets an API entry on its page
    text = pages[out / '00_config.html'][1]
    for name in ('UserError', 'sha256_file', 'atomic_write_bytes'):
        assert f'id="{name.lower()}"' in text or f'id="{name}"' in text, name
