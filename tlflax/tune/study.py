"""The study in its storage: opening it (refusing one made for another search), counting its
trials, and taking back the trials of workers that died.

Every worker of a study points at one storage: an SQLAlchemy URL (`sqlite:///DIR/study.db`, the
default, for one machine; `postgresql://...` or `mysql://...` for many) or `journal:PATH`, an
Optuna journal file (for many workers on a shared filesystem where SQLite's locks cannot be
trusted, as on NFS).

A running trial records its worker (host and process) and a heartbeat (`HEARTBEAT_SECONDS`) in
its system attributes. A running trial whose process is gone from this host, or whose heartbeat
is older than `GRACE_SECONDS`, was killed: it is marked failed and retried once with the same
values (Optuna's `RetryHeartbeatStaleTrialCallback`), in the same trial folder, so the trainer
resumes it from its last checkpoint. A failed trial that was retried does not count towards
`--trials`: its retry does.
"""
import contextlib
import dataclasses
import fcntl
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import optuna
from absl import logging
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tlflax import config as config_lib
from tlflax.errors import ConfigError
from tlflax.resume import listing
from tlflax.sweep.runner import RESULT_NEUTRAL

HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 300
WORKER = 'tlflax_worker'  # system attribute: {'host', 'pid', 'trial' id} of the trial's process
HEARTBEAT = 'tlflax_heartbeat'  # system attribute: time.time() of its last heartbeat
SURPLUS = 'tlflax_surplus'  # system attribute: asked when the study already had its trials
SEARCH = 'tlflax_search'  # study user attribute: the space, objective and base config


STOPPED = 'its worker stopped'  # the error of a trial taken back from a dead worker


def retry(study, failed, stale: bool = False) -> bool:
  """Queues a retry of the `failed` trial (a `FrozenTrial`) with its values and intermediate
  values, as Optuna's `RetryHeartbeatStaleTrialCallback` does. A trial whose worker died
  (`stale`) is retried once: not when a trial of its retries died already. An interrupted one
  (a preempted job, say) is retried every time. Whether it was queued."""
  chain = {*retry_history(failed), failed.number}
  if stale and any(t.number in chain and t.number != failed.number
                   and t.user_attrs.get('error') == STOPPED
                   for t in study.get_trials(deepcopy=False)):
    return False
  with warnings.catch_warnings():  # Optuna calls the callback "experimental"
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, failed)
  return True


def retry_history(trial) -> list[int]:
  """The numbers of the failed trials that `trial` retries, the first one first."""
  return trial.system_attrs.get('retry_history', [])


def default_storage(workdir: Path) -> str:
  """sqlite:///WORKDIR/study.db (a workdir whose name a URL would misread is refused)."""
  path = Path(workdir).resolve() / 'study.db'
  if any(c in str(path) for c in '?#%'):
    raise ConfigError(f'{workdir}: a folder name with ?, # or % cannot be in an SQLite URL; '
                      'name another --workdir, or a --storage')
  return f'sqlite:///{path}'


def open_storage(url: str):
  """The Optuna storage `url` names; a `ConfigError` naming it if it cannot be opened."""
  try:
    if url.startswith('sqlite') and url.split('///', 1)[-1].split('?')[0] in ('', ':memory:'):
      raise ConfigError(f'--storage={url} is a database in memory: the study would be lost '
                        'when the command ends; name a file (sqlite:///PATH)')
    if url.startswith('journal:'):
      from optuna.storages.journal import JournalFileBackend
      path = Path(url.removeprefix('journal:'))
      if not path.parent.is_dir():
        raise ConfigError(f'--storage={url}: the folder {path.parent} does not exist')
      return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return _rdb_storage(url)
  except ConfigError:
    raise
  except Exception as e:  # SQLAlchemy and the database drivers raise many kinds
    message = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ConfigError(f'--storage={url}: cannot open it ({type(e).__name__}: {message})') from e


def _rdb_storage(url: str, attempts: int = 5):
  """Optuna's RDBStorage. Workers that start together on a new database would race to make its
  tables: on an SQLite file they take turns (a lock file beside it); on a server, the ones that
  lose try again."""
  import sqlalchemy
  # a worker waits for another's write rather than failing with "database is locked"
  kwargs = {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else None
  database = url.removeprefix('sqlite:///') if url.startswith('sqlite:///') else None
  lock = (file_lock(Path(f'{database}.lock')) if database and Path(database).parent.is_dir()
          else contextlib.nullcontext())
  with lock:
    for attempt in range(attempts):
      try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
      except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
        if attempt == attempts - 1 or not (isinstance(e, sqlalchemy.exc.IntegrityError)
                                           or 'already exists' in str(e)):
          raise
        time.sleep(1 + attempt)


@contextlib.contextmanager
def file_lock(path: Path):
  """An exclusive lock on `path` (`flock`: across processes on one host, and on shared
  filesystems that support it, as NFSv4 does)."""
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def open_study(storage, name: str, search: dict, direction: str, sampler, pruner):
  """The study `name` in `storage`, made if missing. `search` (space, objective, base config as
  JSON) is recorded in it; a study of that name made for another search is refused."""
  study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                              sampler=sampler, pruner=pruner, load_if_exists=True)
  recorded = study.user_attrs.get(SEARCH)
  if recorded is None:
    study.set_user_attr(SEARCH, search)
    return study
  what = []
  space_changes = config_lib.differences(recorded['space'], search['space'])
  if space_changes:
    what.append(f'another space ({listing(space_changes)})')
  config_changes = {key: values for key, values in
                    config_lib.differences(recorded['config'], search['config']).items()
                    if key not in RESULT_NEUTRAL}
  if config_changes:
    what.append(f'another config ({listing(config_changes)})')
  if what and not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                      for t in study.get_trials(deepcopy=False)):
    logging.warning('Study %s had no trial that finished training: it goes on with this '
                    'search (%s)', name, ' and '.join(what))
    study.set_user_attr(SEARCH, search)
  elif what:
    raise ConfigError(f'study {name!r} in this storage was made with {" and ".join(what)}; '
                      'give this search its own --workdir (and --study, where the storage is '
                      'shared)')
  return study


def retried_numbers(trials) -> set:
  """Numbers of the failed trials that a later trial retries."""
  return {number for t in trials for number in retry_history(t)}


def counted(trials) -> list:
  """The trials that count towards `--trials`: all but retried failures and surplus asks."""
  retried = retried_numbers(trials)
  return [t for t in trials if t.number not in retried and not t.system_attrs.get(SURPLUS)]


@dataclasses.dataclass
class Tally:
  finished: int  # complete, pruned or failed (and not retried)
  running: int
  waiting: int  # retries queued


def tally(study) -> Tally:
  trials = counted(study.get_trials(deepcopy=False))
  return Tally(sum(t.state.is_finished() for t in trials),
               sum(t.state == TrialState.RUNNING for t in trials),
               sum(t.state == TrialState.WAITING for t in trials))


def _process_gone(worker: dict) -> bool:
  """Whether `worker` ran on this host in a process that no longer exists."""
  if worker.get('host') != socket.gethostname() or worker.get('pid') == os.getpid():
    return False
  try:
    os.kill(worker['pid'], 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # another user's process
    return False
  return False


def is_stale(trial, now: float) -> bool:
  """A running trial whose worker died: gone from this host, or silent for `GRACE_SECONDS`
  since its last heartbeat or its start. (A retry starts with its failed trial's attributes:
  the worker's `trial` tells them apart.)"""
  worker = trial.system_attrs.get(WORKER, {})
  own = worker.get('trial') == trial._trial_id
  beat = max(trial.datetime_start.timestamp(),
             trial.system_attrs.get(HEARTBEAT, 0.0) if own else 0.0)
  return (own and _process_gone(worker)) or now - beat > GRACE_SECONDS


def reclaim_stale(study, now: float = None) -> list[tuple[int, bool]]:
  """Marks the stale running trials failed and queues their retries; (number, whether a retry
  was queued) of each."""
  now = time.time() if now is None else now
  storage = study._storage  # Optuna's own fail_stale_trials works on it the same way
  reclaimed = []
  for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    if is_stale(trial, now):
      with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial._trial_id, 'error', STOPPED)
        if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
          queued = retry(study, storage.get_trial(trial._trial_id), stale=True)
          reclaimed.append((trial.number, queued))
  return reclaimed


def claim(study, trial_id: int):
  """Records this process as the trial's worker, with a first heartbeat."""
  storage = study._storage
  storage.set_trial_system_attr(trial_id, WORKER, {'host': socket.gethostname(),
                                                   'pid': os.getpid(), 'trial': trial_id})
  storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())


def still_running(study, trial_id: int) -> bool:
  """Whether the trial is still this worker's: another one fails a trial it takes for dead."""
  return study._storage.get_trial(trial_id).state == TrialState.RUNNING


@contextlib.contextmanager
def heartbeat(study, trial_id: int):
  """Records a heartbeat on the trial every `HEARTBEAT_SECONDS` while the block runs (a write
  that fails is logged and tried again at the next beat)."""
  storage = study._storage
  stop = threading.Event()

  def beat():
    while not stop.wait(HEARTBEAT_SECONDS):
      try:
        storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
      except Exception as e:  # a dropped connection, say: the next beat tries again
        logging.warning('Heartbeat of trial id %d not recorded: %s', trial_id, e)

  thread = threading.Thread(target=beat, daemon=True, name='tlflax-heartbeat')
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
