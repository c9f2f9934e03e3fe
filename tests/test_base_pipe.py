"""run_command and broken pipes, with real processes: `cmd | head` ends quietly with status 0; a broken pipe that is
not stdout's is a failure with its traceback."""
import subprocess
import sys

SCRIPT = r'''
import argparse, multiprocessing, sys
from transformer_nb.base import run_command

def many_lines(args):
    for i in range(200_000): print(f"line {i}")

def worker_pipe(args):
    print("started", flush=True)
    a, b = multiprocessing.Pipe(); b.close()
    a.send("x" * 100_000)

command = {'lines': many_lines, 'worker': worker_pipe}[sys.argv[1]]
sys.exit(run_command(command, argparse.ArgumentParser(prog='toy'), []))
'''


def _run(mode: str, pipe_to: str):
    # the shell's pipeline: our stdout goes to `pipe_to`; `pipefail` gives the Python process's exit status
    cmd = f"set -o pipefail; {sys.executable} -c \"$SCRIPT\" {mode} | {pipe_to}"
    return subprocess.run(['bash', '-c', cmd], env={'SCRIPT': SCRIPT, 'PATH': '/usr/bin:/bin'},
                          capture_output=True, text=True, timeout=120)


def test_reader_that_goes_away_is_a_quiet_success():
    r = _run('lines', 'head -n 1')
    assert r.stdout == 'line 0\n'
    assert r.returncode == 0, r.stderr
    assert r.stderr == ''


def test_other_broken_pipe_is_a_failure():
    r = _run('worker', 'cat')
    assert r.stdout == 'started\n'
    assert r.returncode != 0
    assert 'BrokenPipeError' in r.stderr
