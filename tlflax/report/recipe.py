"""The recipe a run's page compares its config with: the config file and variant its command
named (`--config=FILE[:variant]`), read and resolved when the run first starts and kept in
WORKDIR/recipe.json. The page only reads that file: it never runs a config file, and compares
with the recipe as it was when the run started."""
import sys
from pathlib import Path
from typing import Optional

from absl import logging

FILE = 'recipe.json'


def config_spec(argv: list) -> Optional[str]:
  """The `FILE[:variant]` of a command line's `--config=` (or `--config FILE`), else None."""
  for i, argument in enumerate(argv):
    if argument.startswith('--config='):
      return argument.split('=', 1)[1]
    if argument == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def record(workdir, argv: Optional[list] = None):
  """Writes WORKDIR/recipe.json ({'file', 'config'}: the config file of this process's command,
  or of `argv`, without the command's overrides, resolved as config.json is), unless the
  workdir has one; nothing where the command named no config file or it cannot be read alone."""
  from tlflax import reports, resume, user_files
  path = Path(workdir) / FILE
  spec = config_spec(sys.argv if argv is None else argv)
  if path.exists() or not spec:
    return
  try:
    _, config, _ = user_files.call(spec, 'config file', 'get_config')
    resolved = resume.config_as_json(config)
  except Exception as e:  # the page compares with the defaults instead, and says so
    logging.info('No recipe.json: the config file %s could not be read alone (%s)', spec, e)
    return
  reports.write_json(path, {'file': spec, 'config': resolved})
