"""tlflax: transfer learning of image classifiers from pretrained ConvNets, in JAX/Flax."""
