"""Kill -9 a tiny training run at random points; each restart must end with the uninterrupted run's
parameters.

    scripts/setup.sh && .venv/bin/python scripts/fault_injection.py [--points=10] [--seed=0]

The run is the tests' tiny recipe (synthetic images, random alpha-0.35 weights, 1 + 3 epochs,
through `main.py`; it needs the test extra for the weights file). Kill points, each with a random
delay:

    epoch           during a phase-2 epoch
    save            while a checkpoint after the first is being written (its temporary folder
                    exists), so the restart must fall back on the one before
    between_phases  right after phase 1's last epoch: its phase model and checkpoint being saved
    test_pass       after the last checkpoint, during the test pass and the reports

Prints one line per scenario and a table; exits 1 if any restart fails or ends elsewhere.
"""
import argparse
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from flax import serialization

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
from runs import overrides, run_main, tiny_config  # noqa: E402

LAST_EPOCH = 4  # the tiny recipe's 1 + 3 epochs


class WatchedRun:
  """`main.py` in a subprocess whose output lines are collected as they come."""

  def __init__(self, workdir: Path, flags):
    self.workdir, self.lines = workdir, []
    self.process = run_main(workdir, flags, wait=False)
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line)

  def logged(self, text: str) -> bool:
    return any(text in line for line in self.lines)

  def wait_for(self, condition, timeout: float = 300) -> bool:
    """Polls `condition()` every 10 ms; False if the run ended or time ran out first."""
    deadline = time.time() + timeout
    while not condition():
      if self.process.poll() is not None or time.time() > deadline:
        return False
      time.sleep(0.01)
    return True

  def kill(self, signal_number: int = signal.SIGKILL) -> bool:
    """Sends the signal (SIGKILL: kill -9) and waits for the end; False if the run had already
    ended."""
    alive = self.process.poll() is None
    if alive:
      self.process.send_signal(signal_number)
    self.process.wait()
    self.reader.join()
    return alive


def saving(workdir: Path, after: int = 0) -> bool:
  """Whether a checkpoint of an epoch past `after` is being written (its temporary folder)."""
  return any(int(p.name.split('.')[0]) > after
             for p in (workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*'))


CONDITIONS = {
    'epoch': lambda run: run.logged('Phase fine_tune:'),
    'save': lambda run: saving(run.workdir, after=1),  # a previous checkpoint exists
    'between_phases': lambda run: run.logged('Epoch 1 (feature_extraction 1/1)'),
    'test_pass': lambda run: (run.workdir / 'checkpoints' / str(LAST_EPOCH)
                              / 'commit_success.txt').exists(),
}
MAX_DELAY = {'epoch': 6.0, 'save': 0.0, 'between_phases': 0.3, 'test_pass': 0.15}


def kill_at(workdir: Path, flags, point: str, delay: float) -> str:
  """Starts the run, kills it `delay` s after `point` is reached; says what the kill hit."""
  run = WatchedRun(workdir, flags)
  reached = run.wait_for(lambda: CONDITIONS[point](run))
  time.sleep(delay)
  if not run.kill():
    return 'run ended before the kill'
  if not reached:
    return 'kill point never reached'
  mid_save = saving(workdir)  # a temporary folder left behind: the save was cut
  reports = (workdir / 'test_metrics.json').exists()
  return f'killed{" mid-save" if mid_save else ""}{" after the reports" if reports else ""}'


def final_parameters(workdir: Path):
  return serialization.msgpack_restore((workdir / 'final_variables.msgpack').read_bytes())


def max_difference(a, b) -> float:
  import jax
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--points', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  base = Path(tempfile.mkdtemp(prefix='tlflax-faults-'))
  try:
    flags = overrides(tiny_config(base))
    code, output = run_main(base / 'straight', flags)
    if code:
      sys.exit(f'the uninterrupted run failed:\n{output[-3000:]}')
    reference = final_parameters(base / 'straight')
    rows, failed = [], False
    for index in range(args.points):
      point = rng.choice(sorted(CONDITIONS))
      delay = rng.uniform(0, MAX_DELAY[point])
      workdir = base / f'killed_{index}'
      hit = kill_at(workdir, flags, point, delay)
      code, output = run_main(workdir, flags)
      difference = max_difference(reference, final_parameters(workdir)) if code == 0 else None
      ok = hit.startswith('killed') and code == 0 and difference <= 1e-6
      failed |= not ok
      rows.append((index, point, delay, hit, code, difference, ok))
      print(f'{index}: {point} +{delay:.2f}s: {hit}; restart exit {code}, max |parameter '
            f'difference| {difference}', flush=True)
      if code:
        print(output[-3000:])
    print('\n| # | kill point | delay s | what the kill hit | restart | max abs difference | ok |')
    print('|---|---|---:|---|---|---:|---|')
    for index, point, delay, hit, code, difference, ok in rows:
      print(f'| {index} | {point} | {delay:.2f} | {hit} | exit {code} | {difference} | '
            f'{"yes" if ok else "NO"} |')
    sys.exit(1 if failed else 0)
  finally:
    shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
  main()
