"""Storage: every rule about what is kept, once, over two engines.

- ``queries.sql`` and ``migrations/``: every statement and schema step, once, with a dialect's
  variant beside it (:mod:`.sql` reads them); rows are read by column name (:mod:`.records`);
- :mod:`.database`: one writer with group commit under every role, and the wake-up of this
  process's worker when a commit queued jobs;
- the roles callers hold (:mod:`.roles` opens them together): :mod:`.ingest` (recording, through
  :mod:`receiver.recording`), :mod:`.queue` (the job queue), :mod:`.tasks` (a task and what
  handlers keep), :mod:`.admin` (operators and scripts);
- the engines, connection handling only (:mod:`.connector` is their seam): :mod:`.sqlite` (the
  embedded file) and :mod:`.postgres`.

This package's ``__init__`` imports nothing: :mod:`receiver.recording` reads the connector's
types while the ingest role runs recording.
"""
