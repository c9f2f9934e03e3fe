"""metrics.jsonl holds each step once: a resumed run drops the rows after its checkpoint's step, and a run that
starts again at step 0 (killed before its first checkpoint, then restarted) drops them all; a new run in a used
folder keeps them (its rows follow); and the steps logged after a checkpoint are never lost when it resumes."""
import json
from pathlib import Path

from transformer_nb.config import LoggingConfig
from transformer_nb.parallel import DistInfo
from transformer_nb.run import MetricsLogger, RunPaths


def rows(path):
    return [json.loads(line)['step'] for line in path.read_text().splitlines()]


def test_rows_after_the_start_step_are_dropped(tmp_path):
    paths = RunPaths(tmp_path, tmp_path / 'checkpoints', tmp_path / 'best', tmp_path / 'data', None)
    old = ''.join(json.dumps({'kind': 'train', 'step': s}) + '\n' for s in range(1, 8)) + '{"kind": "tra'
    # resumed at step 5, restarted at step 0 (no checkpoint yet), and a new run in the used folder (rows kept)
    for start, resumed, kept in [(5, True, [1, 2, 3, 4, 5]), (0, True, []), (0, False, [1, 2, 3, 4, 5, 6, 7])]:
        paths.metrics_path.write_text(old)                    # 7 steps and a row cut short by a crash
        log = MetricsLogger(paths, DistInfo(), LoggingConfig(enable_stdout=False))
        log.open(start, 10, resumed=resumed)
        log.file.close()
        assert rows(paths.metrics_path) == kept


def test_every_step_is_on_disk_when_a_checkpoint_is_written(tmp_path, monkeypatch):
    """Log every 4 steps, checkpoint every 6: when step 6 is checkpointed, its row (and step 5's) is in
    metrics.jsonl already, so a crash before the next log line loses no row that a resume from it would keep."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from faults import config_dict, make_assets, train_in_process, write_config
    from transformer_nb.trainer import Trainer
    assets = make_assets(tmp_path / 'assets')
    d = config_dict(assets, tmp_path / 'run', steps=8)
    d['runtime'].update(log_every_n_steps=4, checkpoint={'directory': str(tmp_path / 'run' / 'checkpoints'),
                                                          'every_n_steps': 6, 'max_keep': 3})
    seen, real = {}, Trainer.save
    def spy(self, *args, **kwargs):
        lines = self.paths.metrics_path.read_text().splitlines()
        seen[self.state.step] = max(json.loads(x)['step'] for x in lines if json.loads(x)['kind'] == 'train')
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Trainer, 'save', spy)
    train_in_process(write_config(tmp_path / 'c.yaml', d))
    assert seen == {6: 6, 8: 8}
