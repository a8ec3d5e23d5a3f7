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
import sys
import threading
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


_raised = False  # an `Interrupted` is on its way up: a second signal ends the process
_held = 0  # inside `held` blocks: a signal waits for the outermost block's end
_pending: Optional[int] = None  # the signal that waits


def _raise(signal_number, frame):
  global _raised, _pending
  if _raised or _pending is not None:  # a second signal: as without these handlers
    signal.signal(signal_number, signal.SIG_DFL)
    os.kill(os.getpid(), signal_number)
    return
  if _held:
    _pending = signal_number
    return
  _raised = True
  raise Interrupted(signal_number)


def _raise_again_if_swallowed(unraisable, previous_hook=sys.unraisablehook):
  """Python drops an exception raised inside a garbage-collection callback or a `__del__` (JAX
  runs one at each collection) and reports it "ignored": an `Interrupted` that lands there is
  delivered again a moment later, to the code that runs next (sent by a timer thread: raised here,
  it would be dropped the same way; should it land in such a place again, it comes back here)."""
  global _raised
  if isinstance(unraisable.exc_value, Interrupted):
    _raised = False
    number = signal.Signals[unraisable.exc_value.signal_name]
    timer = threading.Timer(0.01, os.kill, (os.getpid(), number))
    timer.daemon = True
    timer.start()
  else:
    previous_hook(unraisable)


def raise_on_signals():
  """From now on the first SIGINT or SIGTERM raises `Interrupted` in the main thread; a second
  one, during the clean-up, ends the process as it would have without (no clean-up is then half
  done in Python: checkpoints are written to a temporary folder and renamed whole)."""
  global _raised, _pending
  _raised, _pending = False, None
  sys.unraisablehook = _raise_again_if_swallowed
  for number in SIGNALS:
    signal.signal(number, _raise)


def end_by(error: Interrupted):
  """Ends the process by the signal itself, so that a shell or a script sees it killed by the
  signal (and, for Ctrl-C, stops its loop), as Python does for an uncaught KeyboardInterrupt."""
  number = signal.Signals[error.signal_name]
  signal.signal(number, signal.SIG_DFL)
  os.kill(os.getpid(), number)


@contextlib.contextmanager
def held():
  """A block that a first signal does not cut short (writing the files that mark an epoch saved,
  say): the signal raises `Interrupted` when the block ends. A second signal still ends the
  process at once."""
  global _held, _pending, _raised
  _held += 1
  try:
    yield
  finally:
    _held -= 1
  if not _held and _pending is not None:
    number, _pending = _pending, None
    _raised = True
    raise Interrupted(number)


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
