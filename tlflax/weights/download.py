"""Downloading the Keras-applications MobileNetV2 weight files into the Keras cache.

The URLs and file names are the ones `keras.applications.MobileNetV2(weights='imagenet')` uses, and
the cache is Keras's (`$KERAS_HOME/models`, else `~/.keras/models`), so a file Keras already fetched
is reused. Keras publishes no hashes for these files; a download is accepted only once its length
matches Content-Length, an optional user-given sha256 matches and a validation callback (opening it
as HDF5 and checking every layer's shape) passes. Until then it lives in a temporary file next to
the cache entry, removed on any failure, so the cache never holds a partial or invalid file.
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

KERAS_BASE_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/'
KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
KERAS_SIZES = (96, 128, 160, 192, 224)
_CHUNK = 1 << 20


class _NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
  """Follows redirects, except from https to plain http."""

  def redirect_request(self, req, fp, code, msg, headers, newurl):
    if req.full_url.startswith('https:') and not newurl.startswith('https:'):
      raise urllib.error.URLError(f'refused a redirect from https to {newurl}')
    return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngradeRedirects)


def keras_weights_filename(alpha: float, include_top: bool, input_size: int) -> str:
  """The Keras-applications file name; Keras falls back to the 224 file for other sizes."""
  if alpha not in KERAS_ALPHAS:
    raise ValueError(f'Keras publishes ImageNet MobileNetV2 weights for alpha in {KERAS_ALPHAS}, '
                     f'not {alpha}')
  if include_top and input_size != 224:
    raise ValueError('ImageNet weights with the classifier top need 224x224 inputs, '
                     f'got {input_size}')
  rows = input_size if input_size in KERAS_SIZES else 224
  suffix = '' if include_top else '_no_top'
  return f'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{suffix}.h5'


def keras_cache_dir() -> Path:
  """Keras's model cache: `$KERAS_HOME/models`, else `~/.keras/models`."""
  return Path(os.environ.get('KERAS_HOME', Path.home() / '.keras')) / 'models'


def sha256_of(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def check_sha256(path: Path, expected: str):
  """Raises `WeightsError` naming both hashes unless the file's sha256 is `expected`."""
  actual = sha256_of(path)
  if actual != expected.lower():
    raise WeightsError(f'{path}: sha256 {actual} does not match the expected {expected}')


def _verify(path: Path, sha256: Optional[str], validate: Optional[Callable[[Path], object]]):
  if sha256:
    check_sha256(path, sha256)
  if validate:
    validate(path)


def fetch(url: str, filename: str, cache_dir: Optional[Path] = None,
          sha256: Optional[str] = None, validate: Optional[Callable[[Path], object]] = None,
          timeout: float = 60.0) -> Path:
  """Returns the cached `filename`, downloading it from `url` first if needed.

  `validate(path)` is called on the complete file and should raise if it is unusable. Any failure
  raises `DownloadError` naming the file and the URL and leaves no file behind in the cache.
  """
  cache_dir = Path(cache_dir) if cache_dir else keras_cache_dir()
  target = cache_dir / filename
  if target.exists():
    try:
      _verify(target, sha256, validate)
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
    _verify(Path(partial), sha256, validate)
    os.replace(partial, target)
    return target
  except Exception as e:
    raise DownloadError(f'could not get {filename} from {url}: {e}. Offline, put the file at '
                        f'{target}, or use a local weights file') from e
  finally:  # also on Ctrl-C; after os.replace there is nothing left to remove
    Path(partial).unlink(missing_ok=True)
