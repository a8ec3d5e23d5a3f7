"""Port a backbone's weights into tlflax's own format.

    python -m tlflax.weights SOURCE OUTPUT.msgpack [--backbone mobilenet_v2]
        [--backbone_args "{'alpha': 0.35}"] [--include_top] [--input_size 224]

SOURCE is 'imagenet' (the Keras download) or a `.h5`, `.weights.h5`, `.msgpack` file, or one the
backbone reads itself (MobileNetV2: `.tflite`).
"""
import argparse
import ast
import os
import sys
import time

import jax
import numpy as np

from tlflax import backbones
from tlflax.errors import ConfigError
from tlflax.weights import DownloadError, WeightsError, load_pretrained, save_variables
from tlflax.weights.native import NATIVE_SUFFIX


def _literal_dict(text: str) -> dict:
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise argparse.ArgumentTypeError(f'not a Python dict: {text!r}') from e
  if not isinstance(value, dict):
    raise argparse.ArgumentTypeError(f'not a Python dict: {text!r}')
  return value


def parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m tlflax.weights', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('source', help="'imagenet' or a .h5, .weights.h5, .tflite, .msgpack file")
  parser.add_argument('output', help=f'where to write the ported variables ({NATIVE_SUFFIX})')
  parser.add_argument('--backbone', default=backbones.DEFAULT_BACKBONE,
                      help=f'one of {", ".join(backbones.names())}')
  parser.add_argument('--backbone_args', type=_literal_dict, default=None,
                      help="the backbone's arguments as a Python dict, e.g. \"{'alpha': 0.35}\"")
  parser.add_argument('--include_top', action='store_true', help='keep the 1000-way classifier')
  parser.add_argument('--input_size', type=int, default=224,
                      help="selects the Keras file for 'imagenet' where there are several")
  parser.add_argument('--sha256', help='expected sha256 of the source file')
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if not args.output.endswith(NATIVE_SUFFIX):
    print(f'error: OUTPUT must end in {NATIVE_SUFFIX}', file=sys.stderr)
    return 2
  if os.path.lexists(args.output):
    print(f'error: {args.output} exists: name another OUTPUT or remove it', file=sys.stderr)
    return 2
  start = time.perf_counter()
  try:
    variables = load_pretrained(args.source, backbone=args.backbone,
                                backbone_args=args.backbone_args, include_top=args.include_top,
                                input_size=args.input_size, sha256=args.sha256)
  except (WeightsError, DownloadError, ConfigError, ValueError) as e:
    message = str(e).replace('model.backbone_args', '--backbone_args')  # this command's flags
    print(f"error: {message.replace('set model.backbone=', 'use --backbone ')}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:  # a download leaves no partial file behind (`weights.download`)
    print('interrupted: nothing was written', file=sys.stderr)
    return 130
  spec = backbones.get(args.backbone)
  save_variables(args.output, variables, backbone=args.backbone,
                 backbone_args=backbones.arguments(spec, args.backbone_args),
                 include_top=args.include_top, source=str(args.source))
  count = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(variables['params']))
  print(f'{args.output}: {count:,} parameters from {args.source} '
        f'in {time.perf_counter() - start:.1f}s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
