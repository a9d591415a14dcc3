"""Experiments at scale: sweeps over datasets x balancers x seeds and their result tables.

- :mod:`~grace_rul.experiments.sweep`: ``run_sweep`` (skip / resume / re-run / retry cells)
- :mod:`~grace_rul.experiments.executors`: the local process pool and Ray tasks
- :mod:`~grace_rul.experiments.grid`: ``sweep.yaml``, cells and run-dir states
- :mod:`~grace_rul.experiments.summary`: ``collect_results``, ``summarise``, ``format_table``
- :mod:`~grace_rul.experiments.commands`: the ``grace sweep`` / ``grace table`` subcommands

Nothing is imported here, so spawned workers set their thread limits before torch loads.
"""
