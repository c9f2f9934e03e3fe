"""`Trainer.fit()` in a real Jupyter kernel: a progress bar and a loss/LR chart that update in place.

Runs a tiny notebook through `nbclient` (a real ipykernel, as Jupyter runs it) and reads what the
kernel sent: the bar and the chart are two outputs that were updated in place (their final state is
what the saved notebook keeps), the chart is a PNG described in its text, and `live_plot=False`
shows no picture. A plain process (a terminal) gets no display at all. CPU only, tiny model.
"""
import subprocess, sys, textwrap
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

SETUP = textwrap.dedent('''\
    import random
    from pathlib import Path
    from transformer_nb.tokenizer import train_bbpe
    from transformer_nb.config import config_from_dict
    from transformer_nb.trainer import Trainer
    tmp = Path({tmp!r})
    rng = random.Random(0)
    words = 'the king queen lord good night love death sword crown fair sweet heart speak come go'.split()
    (tmp / 'c.txt').write_text('\\n\\n'.join(' '.join(rng.choice(words) for _ in range(12)) for _ in range(400)))
    train_bbpe([tmp / 'c.txt'], tmp / 'tok', vocab_size=300, show_progress=False)
    def cfg(run):
        return config_from_dict({{
            'model': {{'hidden_size': 32, 'intermediate_size': 64, 'num_layers': 1, 'num_attention_heads': 2,
                      'max_position_embeddings': 32}},
            'tokenizer': {{'tokenizer_json': str(tmp / 'tok' / 'tokenizer.json')}},
            'data': {{'train_shards': [str(tmp / 'c.txt')], 'batch_size': 4, 'cache_dir': str(tmp / 'data')}},
            'scheduler': {{'strategy': 'cosine_with_warmup', 'warmup_steps': 2, 'total_steps': 30}},
            'runtime': {{'seed': 0, 'log_every_n_steps': 5, 'device': 'cpu',
                        'checkpoint': {{'directory': str(tmp / run / 'checkpoints'), 'every_n_steps': 30}},
                        'evaluation': {{'every_n_steps': 10, 'max_batches': 2}}}}}})
''')


def run_notebook(tmp_path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP.format(tmp=str(tmp_path)))] + [nbformat.v4.new_code_cell(c) for c in cells]
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3')
    client.execute()
    return nb


def test_live_chart_in_a_jupyter_kernel(tmp_path):
    nb = run_notebook(tmp_path,
                      "t = Trainer(cfg('live'))\nprint(t._live_mode)\nr = t.fit()",
                      "t2 = Trainer(cfg('off'), live_plot=False)\nr2 = t2.fit()")
    outs = nb.cells[1].outputs
    stdout = ''.join(o.text for o in outs if o.output_type == 'stream' and o.name == 'stdout')
    assert stdout.startswith('live\n') and 'step 30/30' in stdout, stdout[:500]        # the log lines are still there
    shown = [o for o in outs if o.output_type == 'display_data']
    # exactly two displayed outputs (bar, chart), each updated in place many times by the kernel
    assert len(shown) == 2, [o.get('data', {}).keys() for o in shown]
    bar, chart = shown
    assert '<progress value="30" max="30"' in bar.data['text/html'] and '30/30 steps' in bar.data['text/plain']
    assert chart.data['image/png'] and chart.data['text/plain'].startswith('Training chart at step 30 of 30')
    off = nb.cells[2].outputs
    assert not [o for o in off if o.output_type == 'display_data'], 'live_plot=False must show no picture'


def test_live_chart_with_stdout_silenced(tmp_path):
    "A caller silencing the log lines with redirect_stdout(None): the kernel's display still draws the chart."
    nb = run_notebook(tmp_path, "import contextlib\nwith contextlib.redirect_stdout(None): r = Trainer(cfg('quiet')).fit()")
    outs = nb.cells[1].outputs
    assert not [o for o in outs if o.output_type == 'stream' and o.name == 'stdout'], 'the log lines were silenced'
    assert len([o for o in outs if o.output_type == 'display_data']) == 2     # bar and chart


def test_no_display_in_a_terminal(tmp_path):
    "A plain Python process (no IPython shell): the live chart stays off, whatever is asked."
    code = "from transformer_nb.display import notebook_display_mode, live_chart_mode; " \
           "print(notebook_display_mode(), live_chart_mode(True, notebook_display_mode()))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['None', 'None']


def test_a_kernel_shell_subclass_is_live(monkeypatch):
    "Colab's shell (a subclass of the kernel's, named `Shell`) is a live notebook too; the terminal's is not."
    import types
    from transformer_nb.display import notebook_display_mode
    ZMQInteractiveShell = type('ZMQInteractiveShell', (), {})
    TerminalInteractiveShell = type('TerminalInteractiveShell', (), {})
    for cls, want in ((type('Shell', (ZMQInteractiveShell,), {}), 'live'),
                      (type('MyTerminal', (TerminalInteractiveShell,), {}), None), (type('Other', (), {}), 'final')):
        monkeypatch.setitem(sys.modules, 'IPython', types.SimpleNamespace(get_ipython=lambda cls=cls: cls()))
        assert notebook_display_mode() == want
