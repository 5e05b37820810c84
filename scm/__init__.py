"""The column core. Importing it asks JAX for one CPU device per core, before JAX's backends
start, so that the column runner (``scm.columns``) splits columns over every core; set
``JAX_NUM_CPU_DEVICES`` (1: no splitting) to choose otherwise."""

from scm.columns import use_host_devices

use_host_devices()
