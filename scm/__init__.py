"""The column core. Importing it asks JAX for one CPU device per core, before JAX's backends
start, so that the column runner (``scm.columns``) splits columns over every core; set
``JAX_NUM_CPU_DEVICES`` (1: no splitting) to choose otherwise.

JAX itself is not imported here (the command line checks its arguments before loading it):
where JAX is not loaded yet, the choice goes to it through ``JAX_NUM_CPU_DEVICES``, which it
reads when it is imported."""

import os
import sys


def available_cores() -> int:
    """The number of CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def devices_forced_by_xla_flags() -> bool:
    """Whether ``XLA_FLAGS`` sets the number of host devices itself."""
    return "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")


if "jax" in sys.modules:
    from scm.columns import use_host_devices

    use_host_devices()
elif "JAX_NUM_CPU_DEVICES" not in os.environ and not devices_forced_by_xla_flags():
    os.environ["JAX_NUM_CPU_DEVICES"] = str(available_cores())
