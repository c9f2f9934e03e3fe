"""metrics.jsonl holds each step once: a resumed run drops the rows after its checkpoint's step, and a run that
starts again at step 0 (killed before its first checkpoint, then restarted) drops them all."""
import json

from transformer_nb.config import LoggingConfig
from transformer_nb.parallel import DistInfo
from transformer_nb.run import MetricsLogger, RunPaths


def rows(path):
    return [json.loads(line)['step'] for line in path.read_text().splitlines()]


def test_rows_after_the_start_step_are_dropped(tmp_path):
    paths = RunPaths(tmp_path, tmp_path / 'checkpoints', tmp_path / 'best', tmp_path / 'data', None)
    old = ''.join(json.dumps({'kind': 'train', 'step': s}) + '\n' for s in range(1, 8)) + '{"kind": "tra'
    for start, kept in [(5, [1, 2, 3, 4, 5]), (0, [])]:
        paths.metrics_path.write_text(old)                    # 7 steps and a row cut short by a crash
        log = MetricsLogger(paths, DistInfo(), LoggingConfig(enable_stdout=False))
        log.open(start, 10)
        log.file.close()
        assert rows(paths.metrics_path) == kept
