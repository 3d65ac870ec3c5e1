"""The shipped configs, one module each: ``get_config(arg)`` returns the run's ConfigDict.

Run one with ``python -m metarm_jax.main --config=configs/<name>.py[:args]``; ``--help`` lists
them with their arguments. Each declares its arguments in ``ARGS`` ({name: type}) and reads them
with ``metarm_jax.config.lib.parse_config_args``: ``name=value`` pairs and bare words for the
bool ones, separated by commas (``configs/quickstart.py:seeds=3,fast``). The files import each
other as modules of this package (``from configs import hh_rlhf``). A config file of your own
outside the repository works the same way: a ``get_config(arg)`` that starts from
``config_lib.base_config()``.
"""
