"""The README and the landing page (nbs/index.ipynb) say the same thing where they overlap: the two commands, the
table of notebooks, the commands of the index (which the README lists among more), and the recorded demo run
(nbs/demo-run.json, written by tools/record_demo.py), which the README quotes and the index prints."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / 'README.md').read_text(encoding='utf-8')
INDEX = '\n\n'.join(''.join(c['source']) for c in json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())['cells']
                    if c['cell_type'] == 'markdown')
DEMO = json.loads((ROOT / 'nbs' / 'demo-run.json').read_text(encoding='utf-8'))


def section(text: str, title: str) -> str:
    "The text under the heading `## title`, up to the next heading of that level."
    m = re.search(rf'^## {re.escape(title)}\n(.*?)(?=^## |\Z)', text, re.M | re.S)
    assert m, f"no section '## {title}'"
    return m.group(1)


def blocks(text: str) -> list[list[str]]:
    "The fenced code blocks of `text`, each as its lines."
    return [b.strip('\n').split('\n') for b in re.findall(r'^```[a-z]*\n(.*?)^```', text, re.M | re.S)]


def notebook_table(text: str) -> dict[str, str]:
    "{notebook: description} from the rows `| [name](path) | description |`."
    return {m[0]: m[1].strip() for m in re.findall(r'^\| \[(\w+)\]\([^)]*\) \| (.*) \|$', text, re.M)}


def test_two_commands_are_the_same():
    assert blocks(section(README, 'Two commands'))[0] == blocks(section(INDEX, 'Two commands'))[0]


def test_notebook_tables_are_the_same():
    readme, index = notebook_table(README), notebook_table(INDEX)
    notebooks = {p.stem for p in (ROOT / 'nbs').glob('*.ipynb')} - {'index'}
    assert readme == index
    assert set(index) == notebooks, f"missing from the table: {notebooks - set(index)}; not notebooks: {set(index) - notebooks}"


def test_index_commands_are_in_the_readme():
    readme = set(blocks(section(README, 'Commands'))[0])
    missing = [line for line in blocks(section(INDEX, 'Commands'))[0] if line not in readme]
    assert not missing, f"commands on the index page that the README does not list: {missing}"


def test_readme_quotes_the_recorded_demo_run():
    summary, samples = blocks(section(README, 'A real run'))[:2]
    assert summary == DEMO['summary']
    m, text = DEMO['machine'], ' '.join(section(README, 'A real run').split())
    assert f"{m['cpu_count']}-core" in text and f"({m['threads']} thread" in text and f"torch {m['torch'].split('+')[0]}" in text, \
        "not the recorded machine"
    assert samples == DEMO['samples'][:len(samples)] and len(samples) >= 4
    make = (ROOT / 'Makefile').read_text()
    ran = re.search(r'^demo:.*\n\t\$\(BIN\)/(.*)$', make, re.M).group(1)
    run_dir = re.search(r'^RUN\s*\?=\s*(\S+)', make, re.M).group(1)
    assert DEMO['command'] == ran.replace('$(RUN)', run_dir), "the recorded command is not what `make demo` runs"


def test_demo_time_is_the_recorded_runs():
    "The time that the README and the index give for `make demo` is the recorded run's, with its thread count."
    done = re.search(r'done in (\S+) ', DEMO['summary'][0]).group(1)
    n = DEMO['machine']['threads']
    said = f"on {'one' if n == 1 else n} CPU thread{'s' * (n != 1)} ({done} in all in the run recorded below)"
    for name, text in (('README', README), ('index', INDEX)):
        para = re.search(r'^`make demo` runs .*?(?=\n\n|\Z)', text, re.M | re.S)
        assert para and said in ' '.join(para.group(0).split()), f"{name}: not the recorded run's time ({said})"
