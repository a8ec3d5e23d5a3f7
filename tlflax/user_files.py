"""Python files a user writes for a command (sweep files, space files): run, and their functions
called, with every failure as one line that names the file."""
import importlib.util
from pathlib import Path

from tlflax.errors import ConfigError


def call(spec: str, what: str, function: str, optional: tuple = ()) -> tuple:
  """Runs the file `PATH[:variant]` (`what` it is, for messages: 'sweep file') and calls its
  `function`, with the variant where one is given; then each `optional` function it defines,
  without arguments. (where, function's result, {optional name: result}); `where` is
  `PATH[:variant]`."""
  path, _, variant = str(spec).partition(':')
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f'{what} {path} does not exist')
  where = f'{path}:{variant}' if variant else str(path)
  module_spec = importlib.util.spec_from_file_location(
      f'tlflax_{what.split()[0]}_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    if not hasattr(module, function):
      raise ConfigError(f'{what} {where} defines no {function}()')
    result = getattr(module, function)(variant) if variant else getattr(module, function)()
    extra = {name: getattr(module, name)() for name in optional if hasattr(module, name)}
  except ConfigError:
    raise
  except Exception as e:  # the file is the user's code: say where it failed, in one line
    raise ConfigError(f'{what} {where} failed: {type(e).__name__}: {e}') from e
  return where, result, extra
