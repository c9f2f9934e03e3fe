LR = [
('markdown', '''## Finding a learning rate

The learning-rate range test (Smith 2015; the fastai `lr_find`): train a copy of the model for a
hundred steps or so while the learning rate grows exponentially from `start_lr` to `end_lr`, one
step per rate, and watch the loss. It falls slowly while the rate is too small, fast in a good
range, then the run blows up. The smoothed loss (an exponential moving average, corrected for
its start like Adam's moments) is easier to read than the raw one; the test stops once it is
`diverge` times its best. A good starting learning rate is about a tenth of the rate at the
smoothed minimum (`suggestion`), and the steepest descent is printed as well.

Nothing is left behind: the model trained is a fresh one from the config (or a copy of `model=`),
the run directory is not touched (the token shards come from the run's cache when they are
there, else they are made in a temporary folder), and the random number generators are restored.'''),
('code', '''#| export
import copy
import shutil
import tempfile
from types import SimpleNamespace'''),
('code', '''#| export
from transformer_nb.config import load_config
from transformer_nb.tokenizer import tokenizer_from_config
from transformer_nb.data import PreparedData, SequentialSampler, prepare
from transformer_nb.model import DecoderModel'''),
('code', '''#| export
@dataclass
class LRFinderResult:
    "What `lr_find` measured: the rates tried, raw and smoothed losses, and the suggested learning rate."
    lrs: list
    losses: list
    smoothed: list
    suggestion: float
    lr_min: float           # the rate at the smoothed minimum
    lr_steep: float         # the rate where the smoothed loss fell fastest
    diverged: bool

    def __str__(self):
        return (f"lr_find: suggested learning rate {self.suggestion:.2e} (a tenth of {self.lr_min:.2e}, where the smoothed "
                f"loss is lowest; steepest descent at {self.lr_steep:.2e}; {len(self.lrs)} steps"
                f"{', stopped when the loss diverged' if self.diverged else ''})")

    def plot(self, ax=None):
        "Smoothed (and raw) loss against the learning rate on a log axis, the suggestion marked."
        if ax is None:
            import matplotlib.pyplot as plt
            _, ax = plt.subplots(figsize=(6.5, 3.5))
        ax.plot(self.lrs, self.losses, color='C0', alpha=0.3, label='loss')
        ax.plot(self.lrs, self.smoothed, color='C0', label='smoothed loss')
        ax.axvline(self.suggestion, color='C3', ls='--', label=f'suggestion {self.suggestion:.1e}')
        ax.plot([self.lr_steep], [np.interp(np.log(self.lr_steep), np.log(self.lrs), self.smoothed)], 'o', color='C2',
                label=f'steepest {self.lr_steep:.1e}')
        ax.set_xscale('log'); ax.set_xlabel('learning rate'); ax.set_ylabel('loss (nats/token)')
        lo, hi = min(self.smoothed), self.smoothed[0]
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
        ax.set_title('learning-rate range test'); ax.grid(alpha=.3); ax.legend(fontsize=8)
        return ax'''),
('code', '''#| export
def lr_suggestion(lrs, smoothed, skip: float = 0.1) -> tuple[float, float, float]:
    "(suggestion, lr_min, lr_steep): a tenth of the rate at the smoothed minimum, the minimum, the steepest fall before it."
    s = np.asarray(smoothed, dtype=float); lr = np.asarray(lrs, dtype=float)
    ok = np.isfinite(s)
    i_min = int(np.nanargmin(np.where(ok, s, np.nan)))
    start = min(int(len(s) * skip), max(i_min - 1, 0))          # the first few points are mostly the moving average's start
    if i_min - start >= 2:
        grad = np.gradient(s[start:i_min + 1], np.log(lr[start:i_min + 1]))
        i_steep = start + int(np.argmin(grad))
    else: i_steep = i_min
    return max(float(lr[i_min]) / 10, float(lr[0])), float(lr[i_min]), float(lr[i_steep])'''),
('markdown', 'On a made-up curve (flat, a descent around 1e-3, a minimum at 1e-2, then divergence):'),
('code', '''lrs_demo = np.geomspace(1e-6, 1, 100)
curve = 5 - 2 / (1 + np.exp(-3 * (np.log10(lrs_demo) + 3))) + 4 * np.clip(np.log10(lrs_demo) + 2, 0, None) ** 2
sug, lmin, steep = lr_suggestion(lrs_demo, curve)
test_close(lmin, 1e-2, eps=3e-3); test_close(sug, 1e-3, eps=3e-4)
assert 3e-4 < steep < 3e-3, steep'''),
('code', '''#| export
def _lr_find_data(config, tokenizer, run_dir, tmp: Path) -> PreparedData:
    "Token shards for `lr_find`: the run's cached ones if they are there, else made in `tmp` (nothing is written elsewhere)."
    t = SimpleNamespace(config=config, tokenizer=tokenizer)
    Trainer._resolve_paths(t, run_dir)                            # where the Trainer would look: run/data or data.cache_dir
    d = config.data
    val = list(d.validation_shards or [])
    kw = dict(val_fraction=d.val_fraction, seed=config.runtime.seed, show_progress=False, verbose=False,
              val_sources=None if not val or _same_sources(val, d.train_shards) else val)
    if not d.train_shards:
        raise TrainingError("data.train_shards is empty: name the training text (files, folders, globs, or 'shakespeare')")
    src = Trainer._tokenizer_source(t)
    if t.data_dir.is_dir():
        data = prepare(d.train_shards, src, t.data_dir, **kw)
        if data.reused: return data
        moved = tmp / data.dir.name                               # new shards: moved out of the run's cache
        shutil.move(str(data.dir), str(moved))
        return PreparedData.load(moved)
    return prepare(d.train_shards, src, tmp, **kw)'''),
('code', '''#| export
def lr_find(config, model: nn.Module | None = None, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
            beta: float = 0.98, diverge: float = 4.0, run_dir=None, plot: bool | None = None, verbose: bool = True) -> LRFinderResult:
    """Learning-rate range test for `config` (a `Config` or a YAML path) on a fresh model (or a copy of `model`):
    one optimizer step per rate, rates from `start_lr` to `end_lr` geometrically. Prints and returns the suggestion;
    `plot` (default: in a notebook) draws the smoothed loss against the rate. Leaves no file and no changed model."""
    if isinstance(config, (str, os.PathLike)): config = load_config(config)
    if num_steps < 5: raise TrainingError(f"lr_find: num_steps must be at least 5, got {num_steps}")
    if not 0 < start_lr < end_lr: raise TrainingError(f"lr_find: need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    rng = get_rng_state()
    try:
        with tempfile.TemporaryDirectory(prefix='tnb-lr-find-') as tmp:
            res = _lr_range_test(config, model, start_lr, end_lr, num_steps, beta, diverge, run_dir, Path(tmp))
    finally: set_rng_state(rng)
    if verbose: print(res, flush=True)
    if plot or (plot is None and notebook_display_mode() is not None): res.plot()
    return res'''),
('code', '''#| export
def _lr_range_test(config, model, start_lr, end_lr, num_steps, beta, diverge, run_dir, tmp: Path) -> LRFinderResult:
    device = resolve_device(config.runtime.device)
    _, amp = resolve_precision(config.runtime.precision, device)
    seed_everything(config.runtime.seed)
    tok = tokenizer_from_config(config.tokenizer)
    data = _lr_find_data(config, tok, run_dir, tmp)
    net = copy.deepcopy(unwrap_model(model)) if model is not None else \\
          DecoderModel(config.model, config.model.vocab_size or tok.get_vocab_size())
    net = net.to(device).train()
    opt = build_optimizer(net, config.optimizer, device)
    base = [g['lr'] / config.optimizer.learning_rate for g in opt.param_groups]   # groups keep their ratios
    accum = config.data.gradient_accumulation_steps
    seq = config.data.sequence_length or config.model.max_position_embeddings
    batches = SequentialSampler(data.train, micro_batch_size(config.data.batch_size, accum), seq, seed=config.runtime.seed, shuffle=True)
    mult = (end_lr / start_lr) ** (1 / (num_steps - 1))
    lrs, losses, smoothed, avg, best, diverged = [], [], [], 0.0, math.inf, False
    for i in range(num_steps):
        lr = start_lr * mult ** i
        for g, b in zip(opt.param_groups, base): g['lr'] = lr * b
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
                _, loss = net(x.to(device), y.to(device))
            (loss / accum).backward(); total += loss.item() / accum
        if config.optimizer.max_grad_norm: nn.utils.clip_grad_norm_(net.parameters(), config.optimizer.max_grad_norm)
        opt.step(); opt.zero_grad(set_to_none=True)
        avg = beta * avg + (1 - beta) * total
        s = avg / (1 - beta ** (i + 1))
        lrs.append(lr); losses.append(total); smoothed.append(s)
        best = min(best, s)
        if not math.isfinite(s) or (i >= 5 and s > diverge * best): diverged = True; break
    keep = [k for k, v in enumerate(smoothed) if math.isfinite(v)]
    lrs, losses, smoothed = [lrs[k] for k in keep], [losses[k] for k in keep], [smoothed[k] for k in keep]
    return LRFinderResult(lrs, losses, smoothed, *lr_suggestion(lrs, smoothed), diverged)'''),
('markdown', '''On the tiny model of this notebook: the run directory is compared file by file before and
after, and a model passed in keeps its weights.'''),
('code', '''def tree(p: Path) -> dict:
    return {str(f.relative_to(p)): f.stat().st_mtime_ns for f in sorted(p.rglob('*'))} if p.exists() else {}

cfg_lr = tiny_config(tmp / 'run1')
before = tree(tmp / 'run1'), tree(tmp / 'data')
res = lr_find(cfg_lr, num_steps=60, start_lr=1e-5, end_lr=10)
test_eq((tree(tmp / 'run1'), tree(tmp / 'data')), before)        # no trace in the run directory or the shard cache
test_close(res.suggestion, max(res.lr_min / 10, 1e-5), eps=1e-12)
assert min(res.smoothed) < res.smoothed[0] - 0.3                   # the loss did fall on the way'''),
('code', '''weights = {k: v.clone() for k, v in live.raw_model.state_dict().items()}
res2 = lr_find(cfg_lr, model=live.raw_model, num_steps=10, plot=False, verbose=False)
assert all(torch.equal(v, live.raw_model.state_dict()[k]) for k, v in weights.items())   # the model passed in is untouched
fresh = tmp / 'no-cache'                  # a config whose run has no data yet: the shards are made in a temporary folder
cfg_new = tiny_config(fresh, **{'data.cache_dir': None, 'runtime.checkpoint.directory': str(fresh / 'checkpoints')})
lr_find(cfg_new, num_steps=8, plot=False, verbose=False)
assert not fresh.exists()'''),
]
