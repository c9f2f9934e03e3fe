"""Build the documentation site from the notebooks, without Quarto.

    python tools/build_docs.py [--out docs]

1. `nbdev`'s own notebook processing (`proc_nbs`, the step `nbdev-docs` runs before Quarto):
   directives are applied, `#| hide` cells dropped, and API docs (`show_doc`) rendered for
   every exported function and class, into `_proc/`.
2. `nbconvert` turns each processed notebook, with the outputs saved in it, into Markdown,
   plots extracted as PNG files.
3. MkDocs (Material theme) builds a static site with a sidebar, search and working links,
   in strict mode, so that a broken link between pages fails the build.

The notebooks are not re-executed here: the site shows the outputs saved in them (refresh them
with `make nbs`). `nbdev-docs` still builds the Quarto site wherever Quarto is installed.
"""
import argparse, os, re, shutil, subprocess, sys
from pathlib import Path

import nbformat
import yaml
from nbconvert import MarkdownExporter
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent


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
    "Remove Quarto/nbdev `#|` lines from code cells, hiding inputs marked `echo: false`."
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
                if m.group(1) == 'echo' and m.group(2).strip().lower() == 'false': tags.add('remove_input')
                continue
            keep.append(line)
        cell.source = '\n'.join(keep)
        if not cell.source.strip(): tags.add('remove_input')
        cell.metadata['tags'] = sorted(tags)


def rewrite_links(md: str, pages: dict, doc_url: str) -> str:
    "Point links at other notebooks, and nbdev's absolute API links, to the site's own pages."
    md = re.sub(r'\]\((?!https?://)([^)#\s]+)\.ipynb(#[^)\s]*)?\)', lambda m: f']({m.group(1)}.md{m.group(2) or ""})', md)
    if doc_url:
        def local(m):
            text, page, anchor = m.group(1), pages.get(m.group(2)), (m.group(3) or '')[1:]
            if not page: return m.group(0)
            # API docs are rendered for exported functions and classes: a private helper has no
            # entry (keep the name, drop the link), a method links to its class's entry
            if anchor.startswith('_'): return f'[{text}]({page})' if anchor.startswith('__') else text
            return f'[{text}]({page}{"#" + anchor.split(".")[0] if anchor else ""})'
        md = re.sub(r'\[([^\]]*)\]\(' + re.escape(doc_url.rstrip('/') + '/') + r'([\w.-]+?)\.html(#[^)\s]*)?\)', local, md)
    return md


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
    cache = Path(proc_nbs(str(cfg.nbs_path), n_workers=0, force=True))

    md_dir = cache / '_site_md'
    shutil.rmtree(md_dir, ignore_errors=True)
    md_dir.mkdir(parents=True)
    shutil.copy(cfg.nbs_path / 'styles.css', md_dir / 'styles.css')
    (md_dir / 'mathjax-config.js').write_text(
        "window.MathJax = {tex: {inlineMath: [['\\\\(', '\\\\)']], displayMath: [['\\\\[', '\\\\]']],\n"
        "  processEscapes: true, processEnvironments: true}, options: {ignoreHtmlClass: '.*|', processHtmlClass: 'arithmatex'}};\n")

    exporter = MarkdownExporter(config=Config({
        'TagRemovePreprocessor': {'enabled': True, 'remove_input_tags': ['remove_input'],
                                  'remove_cell_tags': ['remove_cell']},
    }))
    sources = notebooks(cfg.nbs_path)
    loaded, pages = [], {}
    for src in sources:
        nb = nbformat.read(cache / src.name, as_version=4)
        meta = front_matter(nb)
        page = 'index.md' if src.stem == 'index' else f'{src.stem}.md'
        for name in {src.stem, Path(str(meta.get('output-file', ''))).stem}:
            if name: pages[name] = page
        loaded.append((src, nb, meta, page))

    nav = []
    for src, nb, meta, page in loaded:
        apply_directives(nb)
        nb.metadata['language_info'] = {'name': 'python'}  # fenced code blocks get highlighted
        body, res = exporter.from_notebook_node(nb, resources={'output_files_dir': f'{src.stem}_files'})
        for name, data in res.get('outputs', {}).items():
            (md_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (md_dir / name).write_bytes(data)
        title = meta.get('title') or src.stem
        head = f'# {title}\n\n' + (f'> {meta["description"]}\n\n' if meta.get('description') else '')
        body = re.sub(r'<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->\s*', '', body)
        (md_dir / page).write_text(head + rewrite_links(body, pages, cfg.doc_url), encoding='utf-8')
        nav.append({(title if src.stem == 'index' else f'{src.stem.split("_")[0]} · {title}'): page})

    mkdocs = {
        'site_name': cfg.title,
        'site_description': cfg.description,
        'docs_dir': str(md_dir),
        'site_dir': str(out),
        'use_directory_urls': False,  # plain page.html files: the site opens from disk too
        'repo_url': cfg.git_url or None,
        'nav': nav,
        'theme': {'name': 'material', 'font': False,
                  'features': ['navigation.sections', 'navigation.footer', 'toc.follow', 'content.code.copy'],
                  'palette': {'primary': 'indigo'}},
        'extra_css': ['styles.css'],
        'markdown_extensions': ['attr_list', 'md_in_html', 'admonition', 'tables',
                                {'toc': {'permalink': True}},
                                {'pymdownx.highlight': {'use_pygments': True}}, 'pymdownx.superfences',
                                {'pymdownx.arithmatex': {'generic': True}}],
        # TeX is typeset by MathJax when the page is read online; offline it shows as plain TeX
        'extra_javascript': ['mathjax-config.js', 'https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js'],
        'validation': {'links': {'not_found': 'warn', 'anchors': 'info', 'absolute_links': 'info'}},
    }
    cfg_file = cache / 'mkdocs.yml'
    cfg_file.write_text(yaml.safe_dump(mkdocs, sort_keys=False, allow_unicode=True))
    mk = Path(sys.executable).parent / 'mkdocs'
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
    r = subprocess.run([str(mk), 'build', '--strict', '--quiet', '-f', str(cfg_file)], cwd=cache, env=env)
    if r.returncode: sys.exit(f'mkdocs build failed (exit {r.returncode})')
    print(f'site written to {out} ({len(nav)} pages); open {out / "index.html"}')


if __name__ == '__main__':
    main()
