"""Convolutions written for XLA: depthwise (`depthwise`) and 1x1 (`pointwise`), used by the layer
kinds of `tlflax.backbones`."""
