"""tlflax: transfer learning of image classifiers from pretrained ConvNets, in JAX/Flax."""
from tlflax import xla_flags

xla_flags.apply()
