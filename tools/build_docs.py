"""Build the documentation site from the notebooks, without Quarto.

    python tools/build_docs.py [--out docs]

1. `nbdev`'s own notebook processing (`proc_nbs`, the step `nbdev-docs` runs before Quarto):
   directives are applied, `#| hide` cells dropped, and API docs (`show_doc`) rendered for
   every exported function and class, into `_proc/`. Classes are shown as `class Name(...)`, and
   a parameter whose default is `None` gets no made-up `NoneType` annotation.
2. Each processed notebook becomes Markdown: code cells as highlighted code, and every output as
   a block of its own (`nb-output` plus `nb-stdout`, `nb-stderr`, `nb-warning`, `nb-result`,
   `nb-image`, ...), so that outputs read apart from code; plots are extracted as PNG files with
   alt text taken from the cell (`#| fig-alt:`, else the plot's title and axis labels).
3. MkDocs (Material theme) builds a static site with a sidebar, search and working links,
   in strict mode, so that a broken link between pages fails the build. It works offline and
   from disk: MathJax is copied into the site from the `django-static-mathjax` package (no CDN),
   the search index is inlined (the theme's `offline` plugin) and its worker runs in an iframe
   on `file://` (`tools/docs_assets/iframe-worker-shim.js`); the 404 page links under `site_url`.
   Material for MkDocs reaches end of life on May 5, 2027 (its notice is printed on each build); its
   successor Zensical reads the same mkdocs.yml but has no `offline` plugin yet, so its site cannot
   search from disk.

The notebooks are not re-executed here: the site shows the outputs saved in them (refresh them
with `make nbs`). `nbdev-docs` still builds the Quarto site wherever Quarto is installed.
"""
import argparse, html, importlib.util, inspect, re, shutil, subprocess, sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / 'docs_assets'


def notebooks(nbs: Path):
    "The site's pages in reading order: the landing page, then the numbered notebooks."
    files = sorted(p for p in nbs.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    return sorted(files, key=lambda p: (p.name != 'index.ipynb', p.name))


def front_matter(nb):
    "Title, description and Quarto output file from the raw front-matter cell that nbdev writes."
    for cell in nb.cells:
        if cell.cell_type == 'raw' and cell.source.lstrip().startswith('---'):
            meta = yaml.safe_load(cell.source.strip().strip('-')) or {}
            nb.cells.remove(cell)
            return meta
    return {}


DIRECTIVE = re.compile(r'^\s*#\s?\|\s*([\w-]+):?\s*(.*)$')


def apply_directives(nb):
    "Remove Quarto/nbdev `#|` lines from code cells; note what they ask for (hidden input/output, alt text) in `metadata`."
    for cell in nb.cells:
        for k in [k for k in cell if k not in ('cell_type', 'id', 'metadata', 'source', 'outputs', 'execution_count', 'attachments')]:
            del cell[k]  # nbdev's processing marks cells with extra keys (`has_sd`) ...
        cell.metadata = {'tags': cell.metadata.get('tags', [])}  # ... and execution timings
        if cell.cell_type != 'code': continue
        lines, tags = cell.source.splitlines(), set(cell.metadata.get('tags', []))
        keep = []
        for line in lines:
            m = DIRECTIVE.match(line)
            if m and not keep:  # directives sit at the top of a cell
                key, val = m.group(1), m.group(2).strip()
                if key == 'echo' and val.lower() == 'false': tags.add('remove_input')
                if key == 'output' and val.lower() == 'false': tags.add('remove_output')
                if key == 'output' and val.lower() == 'asis': tags.add('asis')
                if key in ('fig-alt', 'fig-cap'): cell.metadata.setdefault(key, val.strip('"\''))
                continue
            keep.append(line)
        cell.source = '\n'.join(keep)
        if not cell.source.strip(): tags.add('remove_input')
        cell.metadata['tags'] = sorted(tags)


# ---- API docs: classes as classes, no `NoneType` --------------------------------------------------
def patch_showdoc():
    """Make `show_doc` (fastcore's `DocmentText`) write `class Name(` for a class, and leave out the
    annotation `NoneType` that it infers from a `None` default (`x=None`, not `x:NoneType=None`)."""
    from fastcore import docments
    if getattr(docments.DocmentText, '_tnb_patched', False): return
    fmt_param, to_str = docments.DocmentText._fmt_param, docments.DocmentText.__str__

    def _fmt_param(self, nm, p):
        return re.sub(r'\bNoneType\b', 'None', fmt_param(self, nm, p).replace(':NoneType=None', '=None'))

    def __str__(self):
        s = to_str(self)
        return re.sub(r'^def ', 'class ', s) if inspect.isclass(self.obj) else s

    docments.DocmentText._fmt_param, docments.DocmentText.__str__ = _fmt_param, __str__
    docments.DocmentText.__repr__ = __str__
    docments.DocmentText._tnb_patched = True


# ---- cells and outputs to Markdown ---------------------------------------------------------------
ANSI = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')
WARNING_LINE = re.compile(r'\b\w*Warning: |^warning: ', re.M)


def pre(text: str, kind: str, label: str = '') -> str:
    "One output block: raw HTML that Markdown leaves alone, with its own classes."
    text = ANSI.sub('', text).rstrip('\n')
    lab = f' data-label="{label}"' if label else ''
    return f'<pre class="nb-output {kind}"{lab}><code>{html.escape(text)}</code></pre>'


def _strings(pattern: str, src: str) -> list[str]:
    return [m.group(2) for m in re.finditer(pattern + r"""\(\s*f?(['"])(.+?)\1""", src)]


def alt_text(cell, prose: str, n: int) -> str:
    "Alt text of a plot: `#| fig-alt:`, else its title and axis labels from the code, else the prose before it."
    if cell.metadata.get('fig-alt'): return cell.metadata['fig-alt']
    if cell.metadata.get('fig-cap'): return cell.metadata['fig-cap']
    src = cell.source
    titles = _strings(r'\b(?:set_title|suptitle|title)', src)
    ys, xs = _strings(r'\b(?:set_ylabel|ylabel)', src), _strings(r'\b(?:set_xlabel|xlabel)', src)
    clean = lambda t: re.sub(r'\{[^}]*\}', '…', t).replace('$', '').replace('\\', '')
    parts = []
    if titles: parts.append('Plot: ' + '; '.join(dict.fromkeys(map(clean, titles))))
    if ys and xs: parts.append(f'{clean(ys[0])} against {clean(xs[0])}')
    elif ys or xs: parts.append('axis: ' + clean((ys or xs)[0]))
    alt = ', '.join(parts)
    if alt and '…' not in alt: return alt
    # the prose that introduces the plot: its last sentence
    text = re.sub(r'\s+', ' ', re.sub(r'[`*_#>\[\]]|\(http[^)]*\)|\$', '', prose)).strip()
    sentences = [t for t in re.split(r'(?<=[.!?])\s', text) if t.strip()]
    said = sentences[-1] if sentences else ''
    if alt: return f'{alt}. {said}'[:300] if said else alt
    return f'Figure {n}: {said}'[:300] if said else f'Figure {n} of this page'


def render_outputs(cell, stem: str, files: dict, prose: str, counter: list) -> list[str]:
    "Each output as its own block; consecutive pieces of one stream are one output."
    blocks, outs = [], []
    for o in cell.get('outputs', []):  # merge stream chunks that nbformat split
        if outs and o.output_type == 'stream' and outs[-1].output_type == 'stream' and outs[-1].name == o.name:
            outs[-1] = nbformat.from_dict({**outs[-1], 'text': outs[-1].text + o.text})
        else: outs.append(o)
    for o in outs:
        if o.output_type == 'stream':
            text = ''.join(o.text)
            if not text.strip(): continue
            if o.name == 'stderr':
                kind = 'nb-stderr nb-warning' if WARNING_LINE.search(ANSI.sub('', text)) else 'nb-stderr'
                blocks.append(pre(text, kind, 'stderr'))
            else: blocks.append(pre(text, 'nb-stdout'))
        elif o.output_type == 'error':
            blocks.append(pre('\n'.join(o.get('traceback', [])) or f"{o.ename}: {o.evalue}", 'nb-error', 'error'))
        elif o.output_type in ('execute_result', 'display_data'):
            data, kind = o.get('data', {}), 'nb-result' if o.output_type == 'execute_result' else 'nb-display'
            if 'asis' in cell.metadata.get('tags', []) and 'text/markdown' in data:
                blocks.append(''.join(data['text/markdown'])); continue
            img = next((m for m in ('image/png', 'image/jpeg', 'image/svg+xml') if m in data), None)
            if img:
                counter[0] += 1
                ext = {'image/png': 'png', 'image/jpeg': 'jpg', 'image/svg+xml': 'svg'}[img]
                name = f'{stem}_files/{stem}_{counter[0]}.{ext}'
                raw = data[img]
                files[name] = raw.encode() if img == 'image/svg+xml' else __import__('base64').b64decode(raw)
                plain = ''.join(data.get('text/plain', ''))
                alt = plain if plain and not re.match(r'<(Figure|matplotlib)', plain) else alt_text(cell, prose, counter[0])
                blocks.append(f'<div class="nb-output nb-image"><img src="{name}" alt="{html.escape(alt, quote=True)}"></div>')
            elif 'text/html' in data:
                blocks.append(f'<div class="nb-output {kind} nb-html">\n{"".join(data["text/html"]).strip()}\n</div>')
            elif 'text/markdown' in data:
                blocks.append(f'<div class="nb-output {kind} nb-markdown" markdown="1">\n\n{"".join(data["text/markdown"]).strip()}\n\n</div>')
            elif 'text/latex' in data:
                blocks.append(f'<div class="nb-output {kind}" markdown="1">\n\n{"".join(data["text/latex"]).strip()}\n\n</div>')
            elif 'text/plain' in data:
                blocks.append(pre(''.join(data['text/plain']), kind))
    return blocks


def render_notebook(nb, stem: str) -> tuple[str, dict]:
    "A processed notebook as Markdown (prose as is, code fenced, outputs as HTML blocks) and its image files."
    parts, files, prose, counter = [], {}, '', [0]
    for cell in nb.cells:
        tags = set(cell.metadata.get('tags', []))
        if 'remove_cell' in tags: continue
        if cell.cell_type == 'markdown':
            parts.append(cell.source); prose = cell.source; continue
        if cell.cell_type != 'code': continue
        if 'remove_input' not in tags and cell.source.strip():
            parts.append(f'```python\n{cell.source}\n```')
        if 'remove_output' not in tags:
            parts += render_outputs(cell, stem, files, prose, counter)
    return '\n\n'.join(parts) + '\n', files


def heading_ids(md: str) -> set:
    "The anchors MkDocs gives the headings of a Markdown page."
    from markdown.extensions.toc import slugify
    return {slugify(m.group(1).strip(), '-') for m in re.finditer(r'(?m)^#{1,6} (.+?)\s*$', md)}


def rewrite_links(md: str, pages: dict, doc_url: str, ids: dict | None = None) -> str:
    "Point links at other notebooks, and nbdev's absolute API links, to the site's own pages (`ids`: page -> anchors)."
    md = re.sub(r'\]\((?!https?://)([^)#\s]+)\.ipynb(#[^)\s]*)?\)', lambda m: f']({m.group(1)}.md{m.group(2) or ""})', md)
    if doc_url:
        def local(m):
            text, page, anchor = m.group(1), pages.get(m.group(2)), (m.group(3) or '')[1:]
            if not page: return m.group(0)
            # API docs are rendered for exported functions and classes: a private helper has no
            # entry (keep the name, drop the link), a method links to its own entry where it has one
            # (a method attached with @patch, shown as `Class.method`), else to its class's entry
            if anchor.startswith('_'): return f'[{text}]({page})' if anchor.startswith('__') else text
            own = anchor.replace('.', '')
            if '.' in anchor and ids is not None and own in ids.get(page, ()): return f'[{text}]({page}#{own})'
            return f'[{text}]({page}{"#" + anchor.split(".")[0] if anchor else ""})'
        md = re.sub(r'\[([^\]]*)\]\(' + re.escape(doc_url.rstrip('/') + '/') + r'([\w.-]+?)\.html(#[^)\s]*)?\)', local, md)
    return md


def vendor_mathjax(dest: Path) -> str:
    "Copy MathJax (one self-contained TeX-to-SVG file) from the `django-static-mathjax` package into the site."
    spec = importlib.util.find_spec('mathjax')
    src = Path(spec.origin).parent / 'static' / 'mathjax' / 'es5' / 'tex-svg-full.js' if spec and spec.origin else None
    if src is None or not src.exists():
        sys.exit("build_docs: MathJax not found: install the docs dependencies (pip install -e '.[dev]', "
                 "which brings django-static-mathjax)")
    (dest / 'assets' / 'mathjax').mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest / 'assets' / 'mathjax' / 'tex-svg-full.js')
    lic = src.parents[1] / 'LICENSE'
    if lic.exists(): shutil.copy(lic, dest / 'assets' / 'mathjax' / 'LICENSE')
    return 'assets/mathjax/tex-svg-full.js'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default='docs', help='folder to write the site to (default: docs)')
    args = ap.parse_args(argv)
    out = (Path.cwd() / args.out).resolve()

    from nbdev.config import get_config
    from nbdev.doclinks import _build_modidx
    from nbdev.serve import proc_nbs
    cfg = get_config(ROOT)
    _build_modidx()
    patch_showdoc()  # proc_nbs runs show_doc in this process (n_workers=0)
    cache = Path(proc_nbs(str(cfg.nbs_path), n_workers=0, force=True))

    md_dir = cache / '_site_md'
    shutil.rmtree(md_dir, ignore_errors=True)
    md_dir.mkdir(parents=True)
    shutil.copy(cfg.nbs_path / 'styles.css', md_dir / 'styles.css')
    (md_dir / 'assets' / 'javascripts').mkdir(parents=True)
    for name in ('mathjax-config.js', 'iframe-worker-shim.js'):
        shutil.copy(ASSETS / name, md_dir / 'assets' / 'javascripts' / name)
    mathjax = vendor_mathjax(md_dir)

    sources = notebooks(cfg.nbs_path)
    loaded, pages = [], {}
    for src in sources:
        nb = nbformat.read(cache / src.name, as_version=4)
        meta = front_matter(nb)
        page = 'index.md' if src.stem == 'index' else f'{src.stem}.md'
        for name in {src.stem, Path(str(meta.get('output-file', ''))).stem}:
            if name: pages[name] = page
        loaded.append((src, nb, meta, page))

    nav, bodies, ids = [], {}, {}
    for src, nb, meta, page in loaded:
        apply_directives(nb)
        body, files = render_notebook(nb, src.stem)
        for name, data in files.items():
            (md_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (md_dir / name).write_bytes(data)
        title = meta.get('title') or src.stem
        head = f'# {title}\n\n' + (f'> {meta["description"]}\n\n' if meta.get('description') else '')
        bodies[page] = head + re.sub(r'<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->\s*', '', body)
        ids[page] = heading_ids(bodies[page])
        nav.append({(title if src.stem == 'index' else f'{src.stem.split("_")[0]} · {title}'): page})
    for page, md in bodies.items():
        (md_dir / page).write_text(rewrite_links(md, pages, cfg.doc_url, ids), encoding='utf-8')

    mkdocs = {
        'site_name': cfg.title,
        'site_description': cfg.description,
        # the published address: the 404 page (served for any missing path) links its styles and
        # pages under this sub-path instead of from `/`
        'site_url': cfg.doc_url or None,
        'docs_dir': str(md_dir),
        'site_dir': str(out),
        'use_directory_urls': False,  # plain page.html files: the site opens from disk too
        'repo_url': cfg.git_url or None,
        'nav': nav,
        # the page's table of contents sits in the left sidebar (toc.integrate): the content column gets
        # the width (1020 px at a 1280 px window instead of 688), so typical cells fit without side-scrolling
        'theme': {'name': 'material', 'font': False,
                  'features': ['navigation.sections', 'navigation.footer', 'toc.follow', 'toc.integrate',
                               'content.code.copy'],
                  'palette': {'primary': 'indigo'}},
        # search on file://: the index inlined into a script (offline plugin), the worker in an iframe
        'plugins': ['search', 'offline'],
        'extra': {'polyfills': ['assets/javascripts/iframe-worker-shim.js']},
        'extra_css': ['styles.css'],
        'markdown_extensions': ['attr_list', 'md_in_html', 'admonition', 'tables',
                                {'toc': {'permalink': True}},
                                {'pymdownx.highlight': {'use_pygments': True}}, 'pymdownx.superfences',
                                {'pymdownx.arithmatex': {'generic': True}}],
        # TeX is typeset by the MathJax copied into the site: online and offline alike
        'extra_javascript': ['assets/javascripts/mathjax-config.js', mathjax],
        'validation': {'links': {'not_found': 'warn', 'anchors': 'info', 'absolute_links': 'info'}},
    }
    cfg_file = cache / 'mkdocs.yml'
    cfg_file.write_text(yaml.safe_dump(mkdocs, sort_keys=False, allow_unicode=True))
    mk = Path(sys.executable).parent / 'mkdocs'
    # Material for MkDocs prints its end-of-life notice (May 2027) on every build: left visible, not silenced;
    # the README says what it means for this site
    r = subprocess.run([str(mk), 'build', '--strict', '--quiet', '-f', str(cfg_file)], cwd=cache)
    if r.returncode: sys.exit(f'mkdocs build failed (exit {r.returncode})')
    print(f'site written to {out} ({len(nav)} pages); open {out / "index.html"}')


if __name__ == '__main__':
    main()
