"""The errors a user can act on: `main.py` prints any `RunError` as one line, no traceback."""


class RunError(Exception):
  """A problem with a run's config, data, weights or workdir, explained in its message."""


class ConfigError(RunError, ValueError):
  """A config that cannot run, or that disagrees with the run already in the workdir."""


class DataError(RunError, ValueError):
  """Input data that cannot be used, found before training starts."""


class WeightsError(RunError, ValueError):
  """A weights file that does not fit the model."""


class DownloadError(RunError, RuntimeError):
  """A download that failed, was cut, or gave a file that did not verify."""


class CheckpointError(RunError):
  """A workdir whose checkpoints cannot be used."""


class TrainingDiverged(RunError, FloatingPointError):
  """The training loss (or validation loss) became NaN or infinite."""


class ExportError(RunError):
  """An exported model that does not give the trained model's outputs, or cannot be read."""
