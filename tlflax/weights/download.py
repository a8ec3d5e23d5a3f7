"""Downloading the Keras-applications weight files into the Keras cache.

The URLs and file names are the ones `keras.applications.X(weights='imagenet')` uses (each
backbone's `imagenet_weights`), and the cache is Keras's (`$KERAS_HOME/models`, else
`~/.keras/models`), so a file Keras already fetched is reused. A download is accepted only once its
length matches Content-Length, its hash matches (Keras's md5 or sha256 where Keras publishes one,
else an optional user-given one) and a validation callback (opening it as HDF5 and checking every
layer's shape) passes. Until then it lives in a temporary file next to the cache entry, removed on
any failure, so the cache never holds a partial or invalid file.
"""
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from tlflax.errors import DownloadError, WeightsError

_CHUNK = 1 << 20


class _NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
  """Follows redirects, except from https to plain http."""

  def redirect_request(self, req, fp, code, msg, headers, newurl):
    if req.full_url.startswith('https:') and not newurl.startswith('https:'):
      raise urllib.error.URLError(f'refused a redirect from https to {newurl}')
    return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngradeRedirects)


def keras_cache_dir() -> Path:
  """Keras's model cache: `$KERAS_HOME/models`, else `~/.keras/models`."""
  return Path(os.environ.get('KERAS_HOME', Path.home() / '.keras')) / 'models'


def hash_of(path: Path, algorithm: str = 'sha256') -> str:
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def check_file_hash(path: Path, expected: str):
  """Raises `WeightsError` naming both hashes unless the file's hash is `expected`: md5 for 32
  hex digits, sha256 for 64 (as Keras's `get_file`)."""
  algorithm = 'md5' if len(expected) == 32 else 'sha256'
  actual = hash_of(path, algorithm)
  if actual != expected.lower():
    raise WeightsError(f'{path}: {algorithm} {actual} does not match the expected {expected}')


def _verify(path: Path, file_hash: Optional[str],
            validate: Optional[Callable[[Path], object]]):
  if file_hash:
    check_file_hash(path, file_hash)
  if validate:
    validate(path)


def fetch(url: str, filename: str, cache_dir: Optional[Path] = None,
          file_hash: Optional[str] = None, validate: Optional[Callable[[Path], object]] = None,
          timeout: float = 60.0) -> Path:
  """Returns the cached `filename`, downloading it from `url` first if needed.

  `validate(path)` is called on the complete file and should raise if it is unusable. Any failure
  raises `DownloadError` naming the file and the URL and leaves no file behind in the cache.
  """
  cache_dir = Path(cache_dir) if cache_dir else keras_cache_dir()
  target = cache_dir / filename
  if target.exists():
    try:
      _verify(target, file_hash, validate)
    except Exception as e:
      raise DownloadError(f'cached {target} does not verify ({e}); delete it to download '
                          f'again from {url}') from e
    return target
  cache_dir.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=f'.{filename}.', suffix='.part')
  try:
    with os.fdopen(fd, 'wb') as out, _OPENER.open(url, timeout=timeout) as response:
      expected = int(response.headers.get('Content-Length') or 0) or None
      with tqdm(total=expected, unit='B', unit_scale=True, desc=f'Downloading {filename}',
                disable=None) as progress:
        received = 0
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          received += len(chunk)
          progress.update(len(chunk))
    if expected is not None and received != expected:
      raise DownloadError(f'connection closed after {received} of {expected} bytes')
    _verify(Path(partial), file_hash, validate)
    os.replace(partial, target)
    return target
  except Exception as e:
    raise DownloadError(f'could not get {filename} from {url}: {e}. Offline, put the file at '
                        f'{target}, or use a local weights file') from e
  finally:  # also on Ctrl-C; after os.replace there is nothing left to remove
    Path(partial).unlink(missing_ok=True)
