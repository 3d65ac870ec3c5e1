"""User-facing errors: the message names the file, row or key, what was expected, and what to do.

``python -m metarm_jax.main`` prints any ``UserError`` as one line (no traceback) and exits 2,
and a ``Preempted`` as one line with exit code ``PREEMPTED_EXIT_CODE``.
"""

# The exit code of a run stopped by a preemption notice (SIGTERM) after saving where it was:
# 75 is EX_TEMPFAIL of sysexits.h, "a temporary failure; retrying may succeed": running the same
# command again resumes. (2 is a user error, 3 a lost process of a multi-process run.)
PREEMPTED_EXIT_CODE = 75


class UserError(ValueError):
    """Bad input from the user (config, checkpoint, data); its message is for people."""


class ConfigError(UserError):
    """A config value that is missing, unknown or inconsistent."""


class Preempted(Exception):
    """The run stopped on a preemption notice (SIGTERM) at a point where every process saved
    its state; its message (one line) says where and that the same command resumes."""
