"""ConvNeXt: the layer tables are Keras's, and the Flax network of the smallest member (Tiny)
equals Keras's on the same random weights, from both Keras HDF5 layouts, with and without the top.
"""
import jax
import numpy as np
import pytest

import tlflax.backbones.convnext  # noqa: F401  (registers the ConvNeXt backbones)
from backbone_checks import check_parity, check_table, check_trainable_counts
from tlflax import backbones

pytestmark = pytest.mark.usefixtures('float32_matmuls')

SMALLEST = 'convnext_tiny'
OTHERS = ('convnext_small', 'convnext_base', 'convnext_large', 'convnext_xlarge')


@pytest.mark.parametrize('include_top', [False, True])
def test_smallest_layer_table_equals_keras(include_top):
  check_table(SMALLEST, {}, include_top, 32)


@pytest.mark.parametrize('name', OTHERS)
def test_layer_table_equals_keras(name):
  check_table(name, {}, False, 32)


# 32 is the smallest input Keras builds (1x1 after the four downsamplings), 47 is no multiple of
# the total stride 32 (every patchifying convolution drops a border).
@pytest.mark.parametrize('include_top', [False, True])
@pytest.mark.parametrize('file_format', ['h5', 'weights.h5'])
@pytest.mark.parametrize('size', [32, 47])
def test_parity(tmp_path, size, file_format, include_top):
  check_parity(tmp_path, SMALLEST, {}, include_top, size, file_format)


@pytest.mark.parametrize('fine_tune_at', ['convnext_tiny_stage_2_block_6_depthwise_conv', 110])
def test_trainable_counts_equal_keras(fine_tune_at):
  check_trainable_counts(SMALLEST, {}, fine_tune_at, 32)


@pytest.mark.parametrize('name,index', [(SMALLEST, 89), *((name, 173) for name in OTHERS)])
def test_fine_tuning_starts_at_a_block_two_thirds_into_stage_2(name, index):
  spec = backbones.get(name)
  table = backbones.table(spec)
  assert backbones.layer_position(table, spec.fine_tune_at) == index
  assert spec.fine_tune_at == f'{name}_stage_2_block_{6 if name == SMALLEST else 18}_depthwise_conv'
  assert 0.33 < 1 - index / len(table) < 0.35  # the share of layers that train


@pytest.mark.parametrize('name', [SMALLEST, *OTHERS])
def test_imagenet_weights_are_keras_files(name):
  """Keras's URL, file name (`<model name>.h5` / `_notop.h5`) and sha256, from its source."""
  from keras.src.applications import convnext as keras_convnext
  spec = backbones.get(name)
  for include_top, suffix, sha256 in zip((True, False), ('.h5', '_notop.h5'),
                                         keras_convnext.WEIGHTS_HASHES[name]):
    weights = spec.imagenet_weights(include_top, 224)
    assert weights == backbones.WeightsFile(keras_convnext.BASE_WEIGHTS_PATH + name + suffix,
                                            name + suffix, sha256)
    assert spec.imagenet_weights(include_top, 160) == weights  # one file for every size


def test_depthwise_implementations_agree():
  """The 7x7 depthwise convolutions (Keras `Conv2D(groups=channels)`) run as either depthwise
  implementation: what CPUs run in the parity tests ('shifted') equals what GPUs run."""
  spec = backbones.get(SMALLEST)
  images = np.random.default_rng(0).uniform(0, 255, (1, 47, 47, 3)).astype(np.float32)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda v: 0.1 * rng.standard_normal(v.shape, np.float32),
                           backbones.variable_shapes(backbones.table(spec)))
  outputs = [jax.jit(backbones.network(spec, depthwise_implementation=implementation).apply)(
      variables, images) for implementation in ('shifted', 'grouped')]
  assert np.std(outputs[0]) > 1e-3
  np.testing.assert_allclose(*outputs, atol=1e-4, rtol=0)
