"""XLA flags for test processes: the caller's own flags (e.g. ``--xla_cpu_max_isa=AVX2`` for a
reduced-ISA run of the suite) are kept, and only the simulated device count is set."""

import os
import re

_COUNT = re.compile(r"--xla_force_host_platform_device_count=\S+")
# The flags the suite was started with, before conftest adds its device count.
USER_FLAGS = _COUNT.sub("", os.environ.get("XLA_FLAGS", "")).split()


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a process with ``devices`` simulated CPU devices (and the caller's flags)."""
    return " ".join([*USER_FLAGS, f"--xla_force_host_platform_device_count={devices}"])
