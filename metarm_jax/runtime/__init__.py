"""The run's machinery, below every other part and importing none of them: errors, atomic file
writes, fault injection, the host layout of a multi-process run, orbax checkpoints and the
workdir's layout."""
