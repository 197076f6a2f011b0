"""The README's main command: the demo closes the whole loop and exits 0."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_demo_closes_the_loop_and_recovers_the_dropped_webhook(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "demo", "--dir", str(tmp_path / "demo"),
         "--timeout", "90"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "<- recovered by reconciliation" in out
    assert "credits spent: 32" in out
    assert "notifications received by the local sink: 3" in out
    assert "recovered by reconciliation: yes" in out
    wavs = list((tmp_path / "demo" / "media").rglob("*.wav"))
    assert len(wavs) == 5  # two clips of the song, two of the extension, one full song
    assert not list((tmp_path / "demo" / "media").rglob("*.part"))
    # the full song lasts as long as the source up to continue_at plus the extension
    song = re.search(r"full song: ([\d.]+) s = .* \(([\d.]+) s\)", out)
    assert song is not None, out[-3000:]
    assert abs(float(song.group(1)) - float(song.group(2))) <= 1.0
