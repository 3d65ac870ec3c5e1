"""Configuration: ``defaults`` (the one home of every default), ``rules`` (every key's enum and
range), ``lib`` (building, overriding and validating a config, read by ``configs/*.py``) and
``stages`` (the registry of pipeline stages and their own checks). ``defaults`` imports nothing
of the package; the others sit above ``models`` and ``data``."""
