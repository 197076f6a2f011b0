"""Child processes: servers that announce their URL, CPU time read from ``/proc``, and a stop
that always ends what was started."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
_TICK = os.sysconf("SC_CLK_TCK")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ours, with the repository importable (``scripts.*``)."""
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
           "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, so utime (14) and stime (15) are at 11, 12.
    return (int(fields[11]) + int(fields[12])) / _TICK


def write_bytes(pid: int) -> int:
    """Bytes process ``pid`` caused to be written to storage (``/proc/PID/io``: WAL, database
    pages, checkpoints and logs alike, counted when the page is dirtied); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Meter:
    """CPU seconds and bytes written by a set of processes (a server's, a database's) between
    two readings. ``pids`` is called at each reading: database backends come and go."""

    def __init__(self, pids: Any) -> None:
        self._pids = pids
        self._start: dict[int, tuple[float, int]] = {}

    def _read(self) -> dict[int, tuple[float, int]]:
        found = {}
        for pid in self._pids():
            try:
                found[pid] = (cpu_seconds(pid), write_bytes(pid))
            except (OSError, IndexError, ValueError):
                continue
        return found

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> tuple[float, int]:
        """``(cpu_s, write_bytes)`` since :meth:`start`, over processes alive at both ends
        (and those that appeared in between, counted from zero)."""
        now = self._read()
        cpu = sum(c - self._start.get(p, (0.0, 0))[0] for p, (c, _) in now.items())
        written = sum(w - self._start.get(p, (0.0, 0))[1] for p, (_, w) in now.items())
        return cpu, written


def host_ticks() -> tuple[int, int, int]:
    """Machine-wide ``(busy, steal, all)`` clock ticks since boot, over every CPU."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    total = sum(values[:8])
    return total - idle - steal, steal, total


class HostLoad:
    """What the whole machine did between :meth:`start` and :meth:`stop`: to tell a slow
    measurement from a busy neighbour (another process, or the hypervisor's steal)."""

    def __init__(self) -> None:
        self._start = host_ticks()
        self.busy_cores = 0.0
        self.steal_pct = 0.0

    def start(self) -> None:
        self._start = host_ticks()

    def stop(self, seconds: float) -> None:
        busy, steal, total = host_ticks()
        self.busy_cores = (busy - self._start[0]) / _TICK / seconds
        spent = total - self._start[2]
        self.steal_pct = (steal - self._start[1]) / spent * 100 if spent else 0.0


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` now, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Child:
    """A process started by a benchmark; its stderr goes to ``log``."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], log: Path,
                 cwd: Path = ROOT) -> None:
        self.argv = list(argv)
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def announcement(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The JSON object the child prints first on stdout (a server's URL)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        buffer = b""
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[2:4]} did not start; see {self.log}:\n"
                                   + self.log.read_text()[-2000:])
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                buffer += chunk
        found: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
        return found

    def result(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the child to end and parse the JSON object it printed on stdout."""
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(timeout_s=1.0)
            raise RuntimeError(
                f"{self.argv[2:4]} ran past {timeout_s:g}s; see {self.log}"
            ) from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.argv[2:4]} exited {self.proc.returncode}; see "
                               f"{self.log}:\n" + self.log.read_text()[-2000:])
        found: dict[str, Any] = json.loads(out)
        return found

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not ended within ``timeout_s``; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def started(argv: Sequence[str], *, env: Mapping[str, str], log: Path,
            cwd: Path = ROOT) -> Iterator[Child]:
    """A child for the length of the block, stopped however the block ends."""
    child = Child(argv, env=env, log=log, cwd=cwd)
    try:
        yield child
    finally:
        child.stop()


def run_json(argv: Sequence[str], *, env: Mapping[str, str], log: Path,
             timeout_s: float) -> dict[str, Any]:
    """Run a child to its end and parse the JSON object it prints on stdout."""
    with log.open("ab") as err:
        done = subprocess.run(list(argv), cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=err, timeout=timeout_s,
                              check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[2:4]} exited {done.returncode}; see {log}:\n"
                           + log.read_text()[-2000:])
    result: dict[str, Any] = json.loads(done.stdout)
    return result
