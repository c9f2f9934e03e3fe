"""The documentation site builds without Quarto, and what it builds is whole.

Builds the site from the notebooks into a temporary folder with `tools/build_docs.py` (nbdev's
notebook processing, then MkDocs) and checks that every notebook has a page in the sidebar, that
every internal link, anchor and image resolves, and that no page shows an unprocessed nbdev
directive or a Python traceback. Then what a reader needs offline and from disk: no script from
another host (MathJax is in the site), the search index inlined, outputs in blocks of their own,
no temporary paths or warnings, classes shown as classes, a 404 page that works under the site's
sub-path, and alt text on plots. (`make docs-check` runs these on `docs/` with TNB_DOCS_SITE=docs.)
"""
import fcntl, html, importlib.util, os, re, subprocess, sys, tempfile
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
        self.scripts, self.styles, self.alts, self.pres = [], [], {}, []
        self._in_nav = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'nav' and 'md-nav--primary' in (a.get('class') or ''): self._in_nav += 1
        elif tag == 'nav' and self._in_nav: self._in_nav += 1
        if tag == 'a' and a.get('href'):
            self.links.append(a['href'])
            if self._in_nav: self.nav.append(a['href'])
        if tag == 'img' and a.get('src'): self.images.append(a['src']); self.alts[a['src']] = a.get('alt')
        if tag == 'script' and a.get('src'): self.scripts.append(a['src'])
        if tag == 'link' and a.get('rel') == 'stylesheet': self.styles.append(a.get('href', ''))
        if tag == 'pre': self.pres.append(a.get('class') or '')

    def handle_endtag(self, tag):
        if tag == 'nav' and self._in_nav: self._in_nav -= 1


def is_external(url):
    return urlsplit(url).scheme in ('http', 'https', 'mailto', 'data', 'javascript')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    if os.environ.get('TNB_DOCS_SITE'):  # a site that was just built (make docs-check)
        out = Path(os.environ['TNB_DOCS_SITE']).resolve()
        assert (out / 'index.html').exists(), f'{out}: no built site'
    else:
        out = tmp_path_factory.mktemp('site')
        # builds go through nbdev's _proc/ folder of the checkout: one at a time (pytest-xdist workers)
        with open(Path(tempfile.gettempdir()) / f'tnb-docs-build-{os.getuid()}.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
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
    # every exported name gets an API entry on the page of its module (base: errors, hashing, atomic writes)
    text = pages[out / '00_base.html'][1] if (out / '00_base.html') in pages else pages[out / '00_config.html'][1]
    for name in ('UserError', 'sha256_file', 'atomic_write_bytes'):
        assert f'id="{name.lower()}"' in text or f'id="{name}"' in text, name
    assert 'id="load_config"' in pages[out / '00_config.html'][1]


def page_text(text: str) -> str:
    "What a reader sees in the main content: the article, tags stripped, entities decoded."
    m = re.search(r'<article[^>]*>(.*)</article>', text, re.S)
    body = re.sub(r'<(script|style)[^>]*>.*?</\1>', ' ', m.group(1) if m else text, flags=re.S)
    return html.unescape(re.sub(r'<[^>]+>', '', body))


def test_no_script_from_another_host_math_is_local(site):
    out, pages = site
    remote = [f'{h.name}: {s}' for h, (p, _) in pages.items() for s in p.scripts + p.styles
              if is_external(s) or s.startswith('//')]
    assert not remote, 'scripts or styles from another host (the site must work offline):\n' + '\n'.join(remote)
    # a page with formulas loads MathJax from the site itself
    p, text = pages[out / '03_rope.html']
    assert 'class="arithmatex"' in text, 'no formula on the RoPE page?'
    mj = [s for s in p.scripts if 'mathjax' in s.lower() and not s.endswith('config.js')]
    assert mj and all((out / s).exists() for s in mj), mj
    assert (out / mj[0]).stat().st_size > 500_000, 'MathJax looks truncated'


def test_search_works_from_disk(site):
    out, pages = site
    idx = out / 'search' / 'search_index.js'
    assert idx.exists(), 'no inlined search index (the offline plugin): search cannot start from file://'
    assert idx.read_text(encoding='utf-8').startswith('var __index = {'), 'search_index.js is not the inlined index'
    assert 'Trainer' in idx.read_text(encoding='utf-8')
    # the worker shim that runs the search worker in an iframe on file:// is loaded by every page
    p = pages[out / 'index.html'][0]
    shim = [s for s in p.scripts if 'iframe-worker' in s]
    assert shim and (out / shim[0]).exists(), p.scripts


def test_outputs_are_blocks_of_their_own(site):
    out, pages = site
    n_out = 0
    for html_file, (p, text) in pages.items():
        for cls in p.pres:
            if 'nb-output' in cls: n_out += 1
        # every <pre> is either highlighted code or an output block: no bare output that looks like code
        bare = [c for c in p.pres if 'nb-output' not in c and 'highlight' not in c and c.strip()]
        assert not bare, (html_file.name, bare[:5])
    assert n_out > 50, f'only {n_out} output blocks in the whole site'
    # the Trainer example: log lines, its result and its stderr (if any) are separate blocks
    p, text = pages[out / '09g_trainer.html']
    assert 'nb-stdout' in text or 'nb-stderr' in text
    # highlighted code never holds output markers
    assert not re.search(r'<div class="highlight"><pre><span></span><code>[^<]*nb-output', text)


def test_render_outputs_one_block_each():
    "The renderer on a notebook made here: stdout pieces merge, stderr and warnings are marked, the result apart."
    spec = importlib.util.spec_from_file_location('build_docs', ROOT / 'tools' / 'build_docs.py')
    bd = importlib.util.module_from_spec(spec); spec.loader.exec_module(bd)
    import nbformat
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell('print(1); print(2); warn(); 3', outputs=[
        nbformat.v4.new_output('stream', name='stdout', text='one\n'),
        nbformat.v4.new_output('stream', name='stdout', text='two\n'),
        nbformat.v4.new_output('stream', name='stderr', text='\x1b[31mx.py:1: UserWarning: careful\n'),
        nbformat.v4.new_output('execute_result', data={'text/plain': '3'}, execution_count=1)])
    nb.cells = [nbformat.v4.new_markdown_cell('Some prose.'), code]
    bd.apply_directives(nb)
    md, files = bd.render_notebook(nb, 'x')
    blocks = re.findall(r'<pre class="nb-output ([^"]*)"[^>]*><code>(.*?)</code></pre>', md, re.S)
    assert [b[0] for b in blocks] == ['nb-stdout', 'nb-stderr nb-warning', 'nb-result'], blocks
    assert blocks[0][1] == 'one\ntwo' and '\x1b' not in blocks[1][1]
    assert md.index('```python') < md.index('nb-stdout')


def test_no_temp_paths_or_warnings_in_pages(site):
    out, pages = site
    bad = []
    for html_file, (_, text) in pages.items():
        t = page_text(re.sub(r'<div class="highlight">.*?</div>', ' ', text, flags=re.S))   # prose and outputs, not code
        for pat in (r'/tmp/', r'\btnb-cli-\w+', r'\bWarning: '):
            for m in re.finditer(pat, t):
                bad.append(f'{html_file.name}: ...{t[max(0, m.start() - 60):m.end() + 40]!r}...')
    assert not bad, ('temporary paths or raw warnings in pages (refresh the outputs with `make nbs NB=...`, which writes a '
                     'temporary folder as $TMP, or `python tools/nbrun.py --scrub`; silence expected warnings in the cell):\n'
                     + '\n'.join(bad[:20]))


def test_classes_are_classes_and_no_nonetype(site):
    out, pages = site
    classes = {m.group(1) for f in (ROOT / 'transformer_nb').glob('*.py')
               for m in re.finditer(r'(?m)^class (\w+)', f.read_text(encoding='utf-8'))}
    assert 'DecoderModel' in classes
    bad = []
    for html_file, (_, text) in pages.items():
        t = page_text(text)
        bad += [f'{html_file.name}: {m.group(0)}' for m in re.finditer(r'\bdef (\w+)\(', t) if m.group(1) in classes]
        bad += [f'{html_file.name}: NoneType' for _ in re.finditer(r'NoneType', t)]
    assert not bad, '\n'.join(bad[:20])
    assert 'class DecoderModel(' in page_text(pages[out / '06_model.html'][1])


def test_404_page_works_under_the_site_path(site):
    out, pages = site
    p, text = pages[out / '404.html']
    import tomllib
    url = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['urls']['Documentation']
    base = urlsplit(url).path.rstrip('/') + '/'
    assert base != '/', url
    assert p.styles and all(s.startswith(base) for s in p.styles if not is_external(s)), (base, p.styles)
    assert all(s.startswith(base) for s in p.scripts), p.scripts


def test_plots_have_meaningful_alt_text(site):
    out, pages = site
    bad, n = [], 0
    for html_file, (p, _) in pages.items():
        for src, alt in p.alts.items():
            if '_files/' not in src: continue
            n += 1
            if not alt or len(alt) < 12 or alt.lower() in ('png', 'image', 'output') or alt.startswith('<Figure'):
                bad.append(f'{html_file.name}: {src}: alt={alt!r}')
    assert n, 'no plots found'
    assert not bad, '\n'.join(bad)
