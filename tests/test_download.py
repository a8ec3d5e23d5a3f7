"""The Keras-applications download, against an HTTP server on 127.0.0.1 started by the test."""
import hashlib
import http.server
import threading

import numpy as np
import pytest

from keras_reference import random_keras_model, write_published_h5
from tlflax.weights import DownloadError, load_pretrained
from tlflax.backbones import mobilenet_v2
from tlflax.weights.download import keras_cache_dir

FILENAME = mobilenet_v2.imagenet_weights(include_top=False, input_size=96, alpha=0.35).filename


class _Handler(http.server.BaseHTTPRequestHandler):
  files: dict = {}
  requests: list = []
  cut_after = None  # bytes to send before closing the connection, or None

  def do_GET(self):  # noqa: N802 (http.server's naming)
    self.requests.append(self.path)
    body = self.files.get(self.path.lstrip('/'))
    if body is None:
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body if self.cut_after is None else body[:self.cut_after])
    self.close_connection = True

  def log_message(self, *args):
    pass


@pytest.fixture(scope='module')
def good_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('published') / FILENAME
  write_published_h5(path, random_keras_model('mobilenet_v2', {'alpha': 0.35}, False, 96))
  return path.read_bytes()


@pytest.fixture
def server(good_file):
  handler = type('Handler', (_Handler,), {'files': {FILENAME: good_file}, 'requests': []})
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield handler, f'http://127.0.0.1:{httpd.server_address[1]}/'
  httpd.shutdown()
  httpd.server_close()


def load(base_url, cache_dir, **kwargs):
  return load_pretrained('imagenet', backbone_args={'alpha': 0.35}, include_top=False,
                         input_size=96, cache_dir=str(cache_dir), base_url=base_url, **kwargs)


def test_good_file_is_cached_and_reused(server, tmp_path, good_file):
  handler, url = server
  first = load(url, tmp_path, sha256=hashlib.sha256(good_file).hexdigest())
  assert [p.name for p in tmp_path.iterdir()] == [FILENAME]
  assert (tmp_path / FILENAME).read_bytes() == good_file
  second = load(url, tmp_path)
  assert handler.requests == ['/' + FILENAME]  # the second load did not download
  np.testing.assert_array_equal(first['params']['Conv1']['kernel'],
                                second['params']['Conv1']['kernel'])


def test_bad_hash_fails_and_leaves_the_cache_clean(server, tmp_path):
  _, url = server
  with pytest.raises(DownloadError, match=f'{FILENAME}.*{url}.*sha256'):
    load(url, tmp_path, sha256='0' * 64)
  assert list(tmp_path.iterdir()) == []


def test_connection_cut_mid_file_fails_and_leaves_the_cache_clean(server, tmp_path, good_file):
  handler, url = server
  handler.cut_after = len(good_file) // 2
  with pytest.raises(DownloadError, match=f'{FILENAME}.*{url}'):
    load(url, tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_file_that_is_not_the_model_fails_and_leaves_the_cache_clean(server, tmp_path):
  handler, url = server
  handler.files = {FILENAME: b'<html>not weights</html>'}
  with pytest.raises(DownloadError, match='not a readable HDF5'):
    load(url, tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_missing_url_names_it(server, tmp_path):
  handler, url = server
  handler.files = {}
  with pytest.raises(DownloadError, match=f'{url}{FILENAME}.*404'):
    load(url, tmp_path)


def test_cache_follows_keras_home(monkeypatch, tmp_path):
  monkeypatch.setenv('KERAS_HOME', str(tmp_path))
  assert keras_cache_dir() == tmp_path / 'models'


@pytest.mark.parametrize('alpha,include_top,size,name', [
    (1.0, False, 160, 'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5'),
    (0.5, True, 224, 'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224.h5'),
    (1.4, False, 300, 'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.4_224_no_top.h5')])
def test_file_names_are_keras_names(alpha, include_top, size, name):
  file = mobilenet_v2.imagenet_weights(include_top, size, alpha=alpha)
  assert file.filename == name and file.url == mobilenet_v2.WEIGHTS_URL + name


@pytest.mark.parametrize('alpha,include_top,size', [(0.6, False, 224), (1.0, True, 160)])
def test_weights_keras_does_not_publish_are_refused(alpha, include_top, size):
  with pytest.raises(ValueError):
    mobilenet_v2.imagenet_weights(include_top, size, alpha=alpha)


def test_a_redirect_from_https_to_http_is_refused():
  import urllib.error
  import urllib.request

  from tlflax.weights.download import _NoDowngradeRedirects
  handler = _NoDowngradeRedirects()
  request = urllib.request.Request('https://storage.example/weights.h5')
  with pytest.raises(urllib.error.URLError, match='refused a redirect from https'):
    handler.redirect_request(request, None, 302, 'Found', {}, 'http://mirror.example/w.h5')
  kept = handler.redirect_request(request, None, 302, 'Found', {}, 'https://mirror.example/w.h5')
  assert kept.full_url == 'https://mirror.example/w.h5'


def test_ctrl_c_mid_download_leaves_no_partial_file(server, tmp_path):
  from tlflax.weights.download import fetch
  _, url = server

  def interrupted(path):  # as if the user pressed Ctrl-C once the bytes are in
    raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    fetch(url + FILENAME, FILENAME, tmp_path, validate=interrupted)
  assert list(tmp_path.iterdir()) == []


def test_tfds_can_prepare_the_tutorial_download():
  """TFDS reads the download's URL and checksum before it downloads (`python main.py
  --config=configs/cats_dogs.py` on a fresh machine); that step imports `importlib_resources`,
  which its own requirements no longer install."""
  import tensorflow_datasets as tfds
  urls = tfds.builder('cats_vs_dogs').url_infos
  assert [info.checksum for url, info in urls.items() if url.startswith('https://')] == [
      'b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9']
