"""Look at the built documentation site in a real browser: headless Chromium, from disk (file://).

    python tools/docs_check.py [--site docs] [--out _proc/screenshots]

Takes screenshots of a few pages (1280x900 window), measures the share of code and output blocks
that need side-scrolling, and checks that search answers a query and that formulas were typeset,
all with the site opened from disk as a reader would (`docs/index.html`). Where no Chromium or
Chrome is installed it says so and exits 0: the project never requires a browser (`make docs-check`
runs the HTML checks in tests/test_docs.py either way).
"""
import argparse, json, re, shutil, subprocess, sys, tempfile
from pathlib import Path

PAGES = ('index', '03_rope', '09g_trainer', '12_cli')
BROWSERS = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable')

# appended to a copy of a page: after load, the figures are written into <body data-tnb-check>
MEASURE = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const blocks = [...document.querySelectorAll('.md-content pre > code')];
  const wide = blocks.filter(c => c.scrollWidth > c.clientWidth + 1);
  const col = document.querySelector('.md-content__inner');
  document.body.setAttribute('data-tnb-check', JSON.stringify({
    blocks: blocks.length, scroll: wide.length, column: col ? Math.round(col.clientWidth) : null,
    outputs: document.querySelectorAll('.nb-output').length,
    math: document.querySelectorAll('mjx-container').length,
    search: (document.querySelector('.md-search-result__meta') || {}).textContent || ''}));
}, 1500));
</script>"""


def browser():
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def chrome(exe, *args, timeout=120):
    cmd = [exe, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--window-size=1280,900', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def measure(exe, site: Path, page: str, query: str = '') -> dict:
    "Open a copy of `page` with the measuring script (same folder, so relative links hold) and read the figures."
    src = site / f'{page}.html'
    with tempfile.NamedTemporaryFile('w', suffix='.html', prefix='_check_', dir=site, delete=False, encoding='utf-8') as f:
        f.write(src.read_text(encoding='utf-8').replace('</body>', MEASURE + '</body>'))
    tmp = Path(f.name)
    try:
        url = tmp.as_uri() + (f'?q={query}' if query else '')
        dom = chrome(exe, '--virtual-time-budget=10000', '--dump-dom', url).stdout
    finally: tmp.unlink()
    m = re.search(r'data-tnb-check="([^"]*)"', dom)
    return json.loads(m.group(1).replace('&quot;', '"').replace('&amp;', '&')) if m else {}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--site', default='docs', help='the built site (default: docs)')
    ap.add_argument('--out', default='_proc/screenshots', help='folder for the PNG screenshots')
    args = ap.parse_args(argv)
    site, out = Path(args.site).resolve(), Path(args.out).resolve()
    if not (site / 'index.html').exists(): sys.exit(f'docs-check: {site}/index.html not found: run `make docs` first')
    exe = browser()
    if exe is None:
        print('docs-check: no Chromium or Chrome installed: screenshots and in-browser checks skipped '
              '(apt-get install chromium to run them)')
        return 0
    out.mkdir(parents=True, exist_ok=True)
    failed, total, scroll = [], 0, 0
    for page in PAGES:
        if not (site / f'{page}.html').exists(): continue
        chrome(exe, '--virtual-time-budget=8000', f'--screenshot={out / (page + ".png")}', (site / f'{page}.html').as_uri())
        r = measure(exe, site, page)
        if not r: failed.append(f'{page}: the page did not load'); continue
        total, scroll = total + r['blocks'], scroll + r['scroll']
        print(f"{page:12} {r['blocks']:4} code/output blocks, {r['scroll']:3} need side-scrolling; "
              f"content column {r['column']} px; {r['outputs']} output blocks; {r['math']} formulas typeset")
        if 'arithmatex' in (site / f'{page}.html').read_text(encoding='utf-8') and not r['math']:
            failed.append(f'{page}: formulas were not typeset')
    if total: print(f'all          {total:4} blocks, {scroll} ({scroll / total:.0%}) need side-scrolling at a 1280 px window')
    found = measure(exe, site, '03_rope', query='rotary').get('search', '')
    print(f"search from file:// for 'rotary': {found or 'no answer'}")
    if 'matching' not in found: failed.append('search gave no answer from file://')
    print(f'screenshots in {out}')
    for f in failed: print(f'docs-check: {f}', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
