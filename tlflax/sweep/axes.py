"""The axes a sweep file builds its trials from (`[{key: value}, ...]` lists), as big_vision's
sweep files do. Light to import: the sweep command imports this package before it quiets the
libraries' logs."""
import itertools
from typing import Iterable


def sweep(key: str, values: Iterable) -> list[dict]:
  """One axis: `[{key: value} for value in values]`."""
  return [{key: value} for value in values]


def seeds(count: int) -> list[dict]:
  """The axis of seeds 0 .. count-1."""
  return sweep('seed', range(count))


def product(*axes: list[dict]) -> list[dict]:
  """Every combination of one entry per axis, merged (the first axis varies slowest)."""
  return [{k: v for entry in combination for k, v in entry.items()}
          for combination in itertools.product(*axes)]
