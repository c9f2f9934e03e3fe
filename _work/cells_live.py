# cells for 09_training: live display + lr finder; each entry (type, source)
LIVE = [
('markdown', '''## Watching a run in a notebook

In a Jupyter notebook, `fit()` also draws a progress bar and a chart of the training and
evaluation loss and the learning rate, and redraws both in place every few steps (IPython's
`display(..., display_id=True)` and `handle.update`), so the picture grows under the cell while
the model trains; the final chart stays in the cell's output. In a terminal nothing changes (the
log lines and the tqdm bar are all there is), and `Trainer(..., live_plot=False)` turns it off in a
notebook too.

Where the picture goes depends on the shell the code runs in: a Jupyter kernel updates outputs
in place; execnb (which runs `nbdev-test` and `make nbs`) keeps every output, so there the chart is
drawn once, at the end, and only when asked for (`live_plot=True`); a terminal or a script shows
no pictures.'''),
('code', '''#| export
import io'''),
('code', '''#| export
def notebook_display_mode() -> str | None:
    "'live' in a Jupyter kernel (outputs update in place), 'final' in another IPython shell that keeps rich outputs, None elsewhere."
    ipython = sys.modules.get('IPython')            # never imported here: a script that did not load IPython is no notebook
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None: return None
    kind = type(shell).__name__
    if kind == 'ZMQInteractiveShell': return 'live'
    if kind == 'TerminalInteractiveShell': return None
    return 'final'

def live_chart_mode(live_plot: bool | None, mode: str | None) -> str | None:
    "What `Trainer(live_plot=...)` shows in a shell of `mode`: 'live', 'final' (one chart at the end) or None."
    if live_plot is False or mode is None: return None
    if live_plot is None: return 'live' if mode == 'live' else None
    return mode'''),
('markdown', '''This notebook runs under execnb when it is tested, in a real kernel when you open it; the rules
themselves are a pure function:'''),
('code', '''print(notebook_display_mode())
test_eq(live_chart_mode(None, 'live'), 'live')        # a Jupyter kernel: on by default
test_eq(live_chart_mode(None, 'final'), None)         # nbdev-test: off unless asked for
test_eq(live_chart_mode(True, 'final'), 'final')
test_eq(live_chart_mode(False, 'live'), None)         # the switch
test_eq(live_chart_mode(True, None), None)            # a terminal: nothing, whatever is asked
test_eq(live_chart_mode(None, None), None)'''),
('markdown', '''The chart is drawn with matplotlib's object API into a PNG (no pyplot figure is left open, so
nothing else shows up in the cell); what is displayed is a small object whose plain-text form
describes the chart, which is also what a screen reader or the docs' alt text gets.'''),
('code', '''#| export
def training_chart(history: dict, step: int | None = None, total_steps: int | None = None, dpi: int = 90) -> bytes:
    "PNG of train/eval loss (left) and learning rate (right) against the step, from `Trainer.history`."
    from matplotlib.figure import Figure
    tr, ev = history.get('train', []), history.get('eval', [])
    fig = Figure(figsize=(9, 3.2), dpi=dpi, layout='constrained')
    loss_ax, lr_ax = fig.subplots(1, 2, width_ratios=(2, 1))
    if tr:
        steps, losses = [r['step'] for r in tr], [r['loss'] for r in tr]
        loss_ax.plot(steps, losses, color='C0', alpha=0.35 if len(tr) > 20 else 1, label='train')
        if len(tr) > 20:                            # a running mean over ~5% of the points
            k = max(2, len(tr) // 20)
            loss_ax.plot(steps[k - 1:], np.convolve(losses, np.ones(k) / k, mode='valid'), color='C0', label=f'train ({k}-step mean)')
        lr_ax.plot(steps, [r['lr'] for r in tr], color='C2')
    if ev: loss_ax.plot([r['step'] for r in ev], [r['loss'] for r in ev], 'o-', color='C1', label='eval')
    for ax in (loss_ax, lr_ax):
        ax.set_xlabel('step'); ax.grid(alpha=.3)
        if total_steps: ax.set_xlim(0, total_steps)
    loss_ax.set_ylabel('loss (nats/token)'); lr_ax.set_ylabel('learning rate')
    lr_ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 3))
    if tr or ev: loss_ax.legend(loc='upper right')
    loss_ax.set_title(f'step {step}/{total_steps}' if step is not None and total_steps else 'loss', fontsize=10)
    buf = io.BytesIO(); fig.savefig(buf, format='png'); return buf.getvalue()

class ChartImage:
    "A training chart to `display`: PNG for the notebook, a one-line description as its text."
    def __init__(self, history: dict, step: int, total_steps: int):
        self.png, tr, ev = training_chart(history, step, total_steps), history.get('train'), history.get('eval')
        last = lambda rows: f"{rows[-1]['loss']:.4f}" if rows else 'n/a'
        self.text = (f"Training chart at step {step} of {total_steps}: loss (train {last(tr)}, eval {last(ev)}) "
                     f"and learning rate against step")
    def _repr_png_(self): return self.png
    def __repr__(self): return self.text'''),
('code', '''png = training_chart({'train': [{'step': s, 'loss': 5 / s ** .3, 'lr': 1e-3 * min(1, s / 10)} for s in range(1, 60)],
                      'eval': [{'step': s, 'loss': 5.2 / s ** .3} for s in (20, 40)]}, 59, 100)
test_eq(png[:8], b'\\x89PNG\\r\\n\\x1a\\n')
assert len(png) > 10_000'''),
('markdown', '''`LiveChart` owns two display handles, the bar and the chart. `step()` is called after every
optimizer step; it redraws the bar every `every` steps (at most every `min_seconds`), and the
chart only when the history has new points. `close()` draws the last state. `display` is any
function that shows an object and returns a handle with `.update(obj)`: IPython's by default, a
fake one in the test below.'''),
('code', '''#| export
def _clock(s: float) -> str:
    return f"{int(s) // 60}:{int(s) % 60:02d}" if math.isfinite(s) else '?'

def _ipython_display(obj):
    from IPython.display import display
    return display(obj, display_id=True)

class ProgressView:
    "A progress bar as HTML (notebook) and as a line of text."
    def __init__(self, step: int, total: int, history: dict, elapsed: float):
        tr, ev = history.get('train'), history.get('eval')
        eta = elapsed * (total - step) / step if step else float('nan')
        bits = [f'{step}/{total} steps'] + ([f"loss {tr[-1]['loss']:.4f}"] if tr else []) + \\
               ([f"eval {ev[-1]['loss']:.4f}"] if ev else []) + [f'{_clock(elapsed)} elapsed, eta {_clock(eta)}']
        self.step, self.total, self.text = step, total, ' · '.join(bits)
    def _repr_html_(self):
        return (f'<div><progress value="{self.step}" max="{self.total}" style="width:40%;vertical-align:middle"></progress>'
                f' <span style="font-family:monospace">{self.text}</span></div>')
    def __repr__(self): return self.text

class LiveChart:
    "Progress bar and loss/LR chart of a run, redrawn in place (`live`) or drawn once at `close()`."
    def __init__(self, total_steps: int, live: bool = True, every: int | None = None, min_seconds: float = 0.5, display=None):
        self.total, self.live, self.min_seconds = total_steps, live, min_seconds
        self.every = every or max(1, total_steps // 50)
        self.display = display or _ipython_display
        self.handles, self.draws, self._seen, self._last = {}, {'bar': 0, 'chart': 0}, 0, -math.inf
        self.t0 = time.perf_counter()

    def _show(self, name: str, obj):
        if name in self.handles: self.handles[name].update(obj)
        else: self.handles[name] = self.display(obj)
        self.draws[name] += 1

    def step(self, step: int, history: dict):
        "After an optimizer step: the bar every `every` steps; the chart when the history has grown."
        now = time.perf_counter()
        if not self.live or step % self.every or now - self._last < self.min_seconds: return
        self._last = now
        self._show('bar', ProgressView(step, self.total, history, now - self.t0))
        n = len(history.get('train', [])) + len(history.get('eval', []))
        if n > self._seen: self._seen = n; self._show('chart', ChartImage(history, step, self.total))

    def close(self, step: int, history: dict):
        "The last picture: the bar at `step` (live mode) and the whole chart, left in the output."
        if self.live: self._show('bar', ProgressView(step, self.total, history, time.perf_counter() - self.t0))
        if history.get('train') or history.get('eval'): self._show('chart', ChartImage(history, step, self.total))'''),
('markdown', '''A fake `display` records what would be shown: in live mode, the bar follows the steps, the
chart is redrawn only when the history grew, and `close` leaves the final chart; drawn once at
the end otherwise.'''),
('code', '''class FakeHandle:
    def __init__(self, log, obj): self.log = log; log.append(('show', repr(obj)))
    def update(self, obj): self.log.append(('update', repr(obj)))

def fake_run(live, steps=30, log_every=10):
    log, hist = [], {'train': [], 'eval': []}
    lc = LiveChart(steps, live=live, every=5, min_seconds=0, display=lambda o: FakeHandle(log, o))
    for s in range(1, steps + 1):
        if s % log_every == 0: hist['train'] += [{'step': t, 'loss': 1 / t, 'lr': 1e-3} for t in range(s - log_every + 1, s + 1)]
        lc.step(s, hist)
    lc.close(steps, hist)
    return lc, log

lc, log = fake_run(live=True)
test_eq(lc.draws, {'bar': 7, 'chart': 4})      # bar at steps 5, 10, ..., 30 and at close; chart at 10, 20, 30 and close
test_eq(sum(kind == 'show' for kind, _ in log), 2)     # two outputs (bar, chart); every other draw updates them
assert log[-1][1].startswith('Training chart at step 30 of 30: loss (train 0.0333')
lc, log = fake_run(live=False)
test_eq(lc.draws, {'bar': 0, 'chart': 1}); test_eq(len(log), 1)'''),
]
LIVE_DEMO = [
('markdown', '''With the `Trainer`: here (execnb) `live_plot=True` draws the final chart once; in Jupyter the
same cell, even without `live_plot`, shows it growing while the run trains.'''),
('code', '''live = Trainer(tiny_config(tmp / 'live'), live_plot=True)
with contextlib.redirect_stdout(io.StringIO()): live_result = live.fit()     # (the log lines are shown above)
test_eq(live._live_mode, live_chart_mode(True, notebook_display_mode()))   # 'final' here, 'live' in Jupyter'''),
]
