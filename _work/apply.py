import json, uuid, sys
from pathlib import Path
sys.path.insert(0, '_work')
from cells_live import LIVE, LIVE_DEMO
from cells_lr import LR

p = Path('nbs/09_training.ipynb')
nb = json.loads(p.read_text())
cells = nb['cells']

def mk(kind, src):
    c = {'cell_type': kind, 'id': uuid.uuid4().hex[:8], 'metadata': {}, 'source': src.splitlines(keepends=True)}
    if kind == 'code': c.update(execution_count=None, outputs=[])
    return c

def find(pred):
    hits = [i for i, c in enumerate(cells) if pred(''.join(c['source']))]
    assert len(hits) == 1, hits
    return hits[0]

def replace_in(i, old, new):
    s = ''.join(cells[i]['source'])
    assert s.count(old) == 1, (i, old)
    cells[i]['source'] = s.replace(old, new, 1).splitlines(keepends=True)

# hooks in the Trainer
i = find(lambda s: 'class Trainer:' in s)
replace_in(i, "peak_flops: float | None = None):", "peak_flops: float | None = None, live_plot: bool | None = None):")
replace_in(i, "`peak_flops`: for MFU (default: datasheet or measured).", "`peak_flops`: for MFU (default: datasheet or measured).\n    `live_plot`: progress bar and loss/LR chart redrawn in place (default: in a Jupyter kernel; False: off).")
replace_in(i, "        self._peak_flops = peak_flops\n", "        self._peak_flops = peak_flops\n        self._live_mode, self._live = live_chart_mode(live_plot, notebook_display_mode()), None\n")
i = find(lambda s: 'def _fit(self: Trainer)' in s)
replace_in(i, "        if self._bar is not None: self._bar.update(1)\n", "        if self._bar is not None: self._bar.update(1)\n        if self._live is not None: self._live.step(self.step, self.history)\n")
replace_in(i, "    self.model.train()\n    while", "    if self._live_mode and self.is_main: self._live = LiveChart(self.total_steps, live=self._live_mode == 'live')\n    self.model.train()\n    while")
replace_in(i, "        if self._bar is not None: self._bar.close(); self._bar = None\n", "        if self._bar is not None: self._bar.close(); self._bar = None\n        if self._live is not None:\n            try: self._live.close(self.step, self.history)\n            finally: self._live = None\n")

# the live display before the Trainer (which uses it); the LR finder and the demo at the end
t = find(lambda s: s.startswith('## The Trainer'))
cells[t:t] = [mk(k, s) for k, s in LIVE]
end = find(lambda s: s.strip() == 'shutil.rmtree(tmp)')
cells[end:end] = [mk(k, s) for k, s in LIVE_DEMO + LR]
p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
print('ok')
