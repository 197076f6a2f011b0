"""Benchmarks of the receiver against a baseline measured in the same run (``scripts/bench``).

Each benchmark is a module with ``run(options, work) -> Report``: ``ingest``, ``dispatch``,
``download`` and ``reconcile``. What is measured is served by processes of its own
(:mod:`scripts.benchmarks.serve`, the load generator :mod:`scripts.benchmarks.loadgen`, the
sandbox), on 127.0.0.1 only, and every loop is bounded by a count or a duration.
"""
