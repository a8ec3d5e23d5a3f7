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


class _State:
  """Where the handling of a signal stands (one per process: signals go to the main thread)."""
  raised = False  # an `Interrupted` is on its way up: a second signal ends the process
  held: list = []  # what the `held` blocks being run do, outermost first
  pending: Optional[int] = None  # a signal that waits for the outermost `held` block's end
  redelivery: Optional[int] = None  # a swallowed signal, about to be sent again
  previous_unraisable_hook = None


def _raise(signal_number, frame):
  if _State.redelivery is not None:  # the swallowed first signal, back (or a second, as early)
    signal_number, _State.redelivery = _State.redelivery, None
  elif _State.raised or _State.pending is not None:  # a second signal: as without these handlers
    signal.signal(signal_number, signal.SIG_DFL)
    os.kill(os.getpid(), signal_number)
    return
  elif _State.held:
    _State.pending = signal_number
    print(f'{signal.Signals(signal_number).name}: stopping once {_State.held[0]} is done (a '
          'second signal stops at once)', file=sys.stderr, flush=True)
    return
  _State.raised = True
  raise Interrupted(signal_number)


def _send_redelivery():
  number = _State.redelivery
  if number is not None:
    os.kill(os.getpid(), number)


def _raise_again_if_swallowed(unraisable):
  """Python drops an exception raised inside a garbage-collection callback or a `__del__` (JAX
  runs one at each collection) and reports it "ignored": an `Interrupted` that lands there is
  delivered again a moment later, to the code that runs next (sent by a timer thread: raised here,
  it would be dropped the same way; should it land in such a place again, it comes back here)."""
  if isinstance(unraisable.exc_value, Interrupted):
    _State.raised = False
    _State.redelivery = signal.Signals[unraisable.exc_value.signal_name]
    timer = threading.Timer(0.01, _send_redelivery)
    timer.daemon = True
    timer.start()
  else:
    _State.previous_unraisable_hook(unraisable)


def raise_on_signals():
  """From now on the first SIGINT or SIGTERM raises `Interrupted` in the main thread; a second
  one, during the clean-up, ends the process as it would have without (no clean-up is then half
  done in Python: checkpoints are written to a temporary folder and renamed whole). Called
  again, it starts afresh (a process that carried on after an `Interrupted`)."""
  _State.raised, _State.held, _State.pending, _State.redelivery = False, [], None, None
  if sys.unraisablehook is not _raise_again_if_swallowed:
    _State.previous_unraisable_hook = sys.unraisablehook
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
def held(what: str):
  """A block that a first signal does not cut short (`what`: "epoch 3's checkpoint", say): the
  signal is announced and raises `Interrupted` when the block ends. A second signal still ends
  the process at once. Should the block fail, its error goes up, and the signal counts as
  handled."""
  _State.held.append(what)
  succeeded = False
  try:
    yield
    succeeded = True
  finally:
    _State.held.pop()
    if not _State.held and _State.pending is not None:
      number, _State.pending = _State.pending, None
      _State.raised = True
      if succeeded:  # now the signal stops the work
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
