"""XLA flags tlflax runs with, set in the environment before JAX starts its backends.

`--xla_cpu_enable_concurrency_optimized_scheduler=false`: XLA:CPU's default scheduler orders a
step's operations for concurrency. On a 2-core CPU it made the nine window reductions of a shifted
depthwise kernel gradient about 6x slower than running them one after another, and the fine-tuning
step (layers 100 and up, batch 32) 2.1x slower. It only concerns the CPU backend.

Importing `tlflax` applies these flags. They take effect only if no JAX computation has run yet in
the process; a flag already named in `XLA_FLAGS` is left as the user set it.
"""
import os

FLAGS = ('--xla_cpu_enable_concurrency_optimized_scheduler=false',)


def with_flags(xla_flags: str, flags=FLAGS) -> str:
  """`xla_flags` plus each of `flags` whose name it does not already set."""
  named = {token.split('=')[0] for token in xla_flags.split()}
  missing = [flag for flag in flags if flag.split('=')[0] not in named]
  return ' '.join([xla_flags.strip(), *missing]).strip()


def apply(environ=os.environ) -> None:
  """Adds tlflax's XLA flags to `environ['XLA_FLAGS']`."""
  environ['XLA_FLAGS'] = with_flags(environ.get('XLA_FLAGS', ''))
