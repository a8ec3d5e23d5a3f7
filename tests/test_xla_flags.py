"""tlflax's XLA flags are added to XLA_FLAGS without overriding the user's."""
from tlflax import xla_flags

SCHEDULER = '--xla_cpu_enable_concurrency_optimized_scheduler'


def test_flags_are_added_once_and_the_users_choice_wins():
  assert xla_flags.with_flags('') == f'{SCHEDULER}=false'
  both = xla_flags.with_flags('--xla_force_host_platform_device_count=4')
  assert both.split() == ['--xla_force_host_platform_device_count=4', f'{SCHEDULER}=false']
  assert xla_flags.with_flags(both) == both
  assert xla_flags.with_flags(f'{SCHEDULER}=true') == f'{SCHEDULER}=true'


def test_importing_tlflax_set_the_flags():
  import os
  assert f'{SCHEDULER}=' in os.environ['XLA_FLAGS']
