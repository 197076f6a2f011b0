"""Signed fuzzing over the real app: whatever arrives, nothing answers 5xx, nothing escapes,
and every verified body ends recorded or quarantined in the SQLite file (issue 8, item 1).

The generator and the checks are :mod:`scripts.fuzzing`'s, whose long mode (``scripts/fuzz
-n 100000``) runs the same cases by the hundred thousand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from scripts.fuzzing import main, run
from scripts.provider_fuzzing import CONFIRMING, PROVIDERS, run_providers

CASES = 2000  # hypothesis: about 20-40 s here; the long mode is scripts/fuzz


def test_signed_garbage_never_answers_5xx_and_every_verified_body_is_kept(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:  # thousands of quarantine warnings: kept, not printed
        report = run(CASES, directory=tmp_path, seed_value=20_261_130, reads=500)
    summary = report.summary()
    assert report.ok, json.dumps(summary, indent=2)
    assert report.cases == CASES
    # the generator reaches every path: refused, recorded, repeated and kept aside
    assert {"recorded", "duplicate", "quarantined"} <= set(report.outcomes), summary
    assert report.statuses[401] > 0, summary
    assert not [e for e in logs if e["log_level"] == "error"], "an error was logged"


def test_the_long_modes_random_generator_finds_nothing_in_5000_cases(tmp_path: Path) -> None:
    with capture_logs():
        report = run(5000, directory=tmp_path, seed_value=7, reads=500, generator="random")
    assert report.ok, json.dumps(report.summary(), indent=2)
    assert report.cases == 5000
    assert {"recorded", "duplicate", "quarantined"} <= set(report.outcomes)


@pytest.mark.postgres
def test_the_random_generator_finds_nothing_on_postgresql(tmp_path: Path, pg_dsn: str) -> None:
    """The same cases on PostgreSQL (``scripts/fuzz --db URL``), which refuses what SQLite
    takes (a NUL in text, an index entry past 2,704 bytes): nothing answers 5xx there either,
    and every verified body is kept."""
    with capture_logs() as logs:
        report = run(3000, directory=tmp_path, seed_value=7, reads=300, generator="random",
                     db_url=pg_dsn)
    assert report.ok, json.dumps(report.summary(), indent=2)
    assert report.cases == 3000
    assert {"recorded", "duplicate", "quarantined"} <= set(report.outcomes)
    assert not [e for e in logs if e["log_level"] == "error"], "an error was logged"
    # its counts need a database of its own (refused before main() configures the logs,
    # which would change them for the tests that follow)
    with pytest.raises(SystemExit) as refused:
        main(["-n", "10", "--db", pg_dsn])
    assert refused.value.code == 2


def test_every_providers_endpoint_keeps_what_it_authenticates_and_nothing_else(
    tmp_path: Path,
) -> None:
    """Each provider's path, its shapes and garbage, authenticated its way or not (issue 21):
    no 5xx, every authenticated body kept (unconfirmed where nothing covers the body), every
    other one refused and not stored."""
    with capture_logs() as logs:
        report = run_providers(4000, directory=tmp_path, seed_value=20_261_207, reads=300)
    summary = report.summary()
    assert report.ok, json.dumps(summary, indent=2)
    assert report.cases == 4000
    assert report.statuses[401] > 0, summary
    assert report.statuses[404] > 0, summary
    for provider in PROVIDERS:  # each provider's endpoint was reached, usably and not
        kept = "unconfirmed" if provider in CONFIRMING else "recorded"
        assert report.outcomes[f"{provider}:{kept}"] > 0, summary
        assert report.outcomes[f"{provider}:quarantined"] > 0, summary
    assert not [e for e in logs if e["log_level"] == "error"], "an error was logged"
