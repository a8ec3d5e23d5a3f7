"""Stopping on SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) with one line that says
where the work stood and what to do next, instead of a traceback.

`raise_on_signals` makes both signals raise `Interrupted` in the main thread, wherever it is (as
Python does for Ctrl-C with `KeyboardInterrupt`). On its way up, `during` blocks name what was
running (`e.during`: the phase, epoch and step of a training run, say), and the code that owns the
outputs says what was kept (`e.outcome`); the command line prints both (`message`) and ends by
the signal (`end_by`: a shell reports status 130 or 143).
"""
import contextlib
import os
import signal
from typing import Callable, Optional, Union

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
  """A SIGINT or SIGTERM arrived. A `BaseException`, as `KeyboardInterrupt` is, so that the
  `except Exception` of code that skips damaged files does not take it for damage."""

  def __init__(self, signal_number: int):
    super().__init__(signal.Signals(signal_number).name)
    self.signal_name = signal.Signals(signal_number).name
    self.during: Optional[str] = None  # what was running
    self.outcome: Optional[str] = None  # what was kept, and how to go on

  def message(self, default_outcome: str) -> str:
    """One line: the signal, what it interrupted, and what was kept."""
    during = f' during {self.during}' if self.during else ''
    return f'interrupted by {self.signal_name}{during}; {self.outcome or default_outcome}'


def _raise(signal_number, frame):
  for number in SIGNALS:  # a second signal ends the process at once, as without these handlers
    signal.signal(number, signal.SIG_DFL)
  raise Interrupted(signal_number)


def raise_on_signals():
  """From now on the first SIGINT or SIGTERM raises `Interrupted` in the main thread; a second
  one, during the clean-up, ends the process as it would have without (no clean-up is then half
  done in Python: checkpoints are written to a temporary folder and renamed whole)."""
  for number in SIGNALS:
    signal.signal(number, _raise)


def end_by(error: Interrupted):
  """Ends the process by the signal itself, so that a shell or a script sees it killed by the
  signal (and, for Ctrl-C, stops its loop), as Python does for an uncaught KeyboardInterrupt."""
  number = signal.Signals[error.signal_name]
  signal.signal(number, signal.SIG_DFL)
  os.kill(os.getpid(), number)


@contextlib.contextmanager
def during(what: Union[str, Callable[[], str]]):
  """Names what the block does in an `Interrupted` that passes through it, unless a block inside
  named it first. `what` may be a function, called only then (for a step counter, say)."""
  try:
    yield
  except Interrupted as e:
    if e.during is None:
      e.during = what() if callable(what) else what
    raise
