"""``python -m scripts.benchmarks.profile``: where a saturated receiver's time goes, thread by
thread (not one of ``scripts/bench``'s timed benchmarks: it explains them).

The receiver is started as ``ingest`` starts it (:func:`scripts.benchmarks.ingest.start`: the
same settings and route, 1 or N web processes, SQLite or PostgreSQL, on a fresh database or a
copy of ``--db``) and loaded by the ingest load generator. Over the measured window:

- every thread of every server process is charged its CPU time from
  ``/proc/PID/task/TID/stat`` (exact, all threads, GIL or not);
- py-spy samples the processes (``--nonblocking``, so the sampled process never pauses), and
  each thread's samples give its top frames, self and inclusive.

It prints one table per process (thread, CPU cores, share of samples, top frames) and writes
py-spy's raw stacks to ``bench-results/profile/`` (folded stacks: flamegraph.pl or speedscope
read them). py-spy comes with the ``dev`` extra; it needs ptrace (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from scripts.benchmarks.ingest import Server, load, postgres_or_none, start, verify
from scripts.benchmarks.processes import ROOT

OUT = ROOT / "bench-results" / "profile"
_TICK = 100.0  # USER_HZ: /proc's clock ticks a second on Linux


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICK
    return found


def folded(path: Path) -> tuple[dict[int, str], dict[int, list[tuple[list[str], int]]]]:
    """py-spy's raw output (``thread (TID): name;frame;...;frame COUNT`` lines): thread names
    and each thread's stacks."""
    names: dict[int, str] = {}
    stacks: dict[int, list[tuple[list[str], int]]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        head = frames[0]  # "thread (1234): MainThread" or "thread (0x7f...)"
        try:
            tid = int(head.split("(", 1)[1].split(")", 1)[0], 0)
        except (IndexError, ValueError):
            continue
        names[tid] = head.split(": ", 1)[1] if ": " in head else head
        stacks.setdefault(tid, []).append((frames[1:], int(count)))
    return names, stacks


def top_frames(stacks: list[tuple[list[str], int]], n: int) -> tuple[list[str], list[str]]:
    """The ``n`` frames with the most samples on top of the stack (self), and anywhere in it
    (inclusive, leaving out the frames on nine stacks in ten or more: the thread's entry),
    each with its share of the samples."""
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    for frames, count in stacks:
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    entry = {f for f, c in anywhere.items() if c >= 0.9 * total}  # the thread's entry frames
    return ([f"{c / total:5.1%} {f}" for f, c in own.most_common(n)],
            [f"{c / total:5.1%} {f}" for f, c in anywhere.most_common(n + len(entry))
             if f not in entry][:n])


def profile(server: Server, *, concurrency: int, seconds: float, warmup: float,
            work: Path, top: int) -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: `scripts/bootstrap` installs the dev extra")
    OUT.mkdir(parents=True, exist_ok=True)
    label = f"{server.backend}-x{server.procs}-c{concurrency}"
    raw = {pid: OUT / f"{label}-{pid}.txt" for pid in server.pids}
    spies: list[subprocess.Popen[bytes]] = []
    cpu_before: dict[int, dict[int, float]] = {}
    cpu_after: dict[int, dict[int, float]] = {}
    began: list[float] = []

    def window() -> None:
        """At the measured window's start: read the threads' CPU and start sampling."""
        if began:
            return
        began.append(time.monotonic())
        for pid in server.pids:
            cpu_before[pid] = thread_cpu(pid)
            spies.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                 "--rate", "200", "--nonblocking", "--threads", "--format", "raw",
                 "--output", str(raw[pid])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    timer = threading.Timer(1.0 + warmup, window)  # load() starts its clients 1 s from now
    timer.start()
    point = load(server.url, concurrency=concurrency, clients=1, client="raw", warmup=warmup,
                 duration=seconds, prefix=f"profile-{label}", work=work, pids=lambda: server.pids)
    timer.cancel()
    for pid in server.pids:
        cpu_after[pid] = thread_cpu(pid)
    elapsed = time.monotonic() - began[0] if began else seconds
    for spy_process in spies:
        spy_process.wait(timeout=60)
    kept = verify(server, point["acked"])
    lines = [f"## {label}: {point['rps']:,.0f} deliveries/s, "
             f"{point['cpu_ms']:.2f} ms of server CPU a delivery, host busy "
             f"{point['host_busy_cores']:.2f} cores, statuses {point['statuses']}"
             f", {kept['acked_missing']} of those answered 200 missing from the database", ""]
    for pid in server.pids:
        names, stacks = folded(raw[pid]) if raw[pid].exists() else ({}, {})
        samples = {tid: sum(c for _, c in s) for tid, s in stacks.items()}
        total = sum(samples.values()) or 1
        lines += [f"### process {pid}", "",
                  "| thread | CPU cores | samples | top frames (self) | top frames (inclusive) |",
                  "|---|---|---|---|---|"]
        before, after = cpu_before.get(pid, {}), cpu_after.get(pid, {})
        for tid in sorted(after, key=lambda t: before.get(t, 0.0) - after[t]):
            cores = (after[tid] - before.get(tid, 0.0)) / elapsed
            if cores < 0.01 and tid not in samples:
                continue
            own, anywhere = top_frames(stacks.get(tid, []), top)
            name = names.get(tid, "main" if tid == pid else "?")
            lines.append(f"| {name} ({tid}) | {cores:.2f} | {samples.get(tid, 0) / total:.0%} "
                         f"| {'<br>'.join(own)} | {'<br>'.join(anywhere)} |")
        lines += ["", f"raw stacks: {raw[pid]}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmarks.profile",
                                     description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--top", type=int, default=6, help="frames listed a thread")
    parser.add_argument("--db", type=Path,
                        help="sqlite: profile on a copy of this file (e.g. one prefilled)")
    args = parser.parse_args(argv)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="profile-") as folder, \
            contextlib.ExitStack() as stack:
        work = Path(folder)
        server = Server(backend=args.backend, procs=args.procs, folder=work / "server")
        server.folder.mkdir()
        if args.db is not None:
            shutil.copyfile(args.db, server.folder / "receiver.db")
        if args.backend == "postgresql":
            pg = stack.enter_context(postgres_or_none(notes))
            if pg is None:
                raise SystemExit("; ".join(notes))
            server.db = pg.create("profile")
        start(server, stack)
        print(profile(server, concurrency=args.concurrency, seconds=args.seconds,
                      warmup=args.warmup, work=work, top=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
