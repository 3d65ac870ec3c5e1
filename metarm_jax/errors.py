"""User-facing errors: the message names the file, row or key, what was expected, and what to do.

``python -m metarm_jax.main`` prints any ``UserError`` as one line (no traceback) and exits 2.
"""


class UserError(ValueError):
    """Bad input from the user (config, checkpoint, data); its message is for people."""


class ConfigError(UserError):
    """A config value that is missing, unknown or inconsistent."""
