"""media: a large file into an S3-compatible store (moto's server on loopback), kept by
:class:`receiver.media.ObjectMedia` vs the same bytes uploaded by obstore alone, each variant
in a fresh process (so that its peak RSS is its own).

Variants, run in turn (``--media-repeat`` rounds), on one file generated in the work folder:

``obstore.put (plain)``
    ``obstore.put(store, key, Path)`` in a thread: the library's own multipart upload of a
    local file with its defaults (5 MiB parts, 12 in flight): the baseline;
``MediaStore.put_file``
    :meth:`receiver.media.ObjectMedia.put_file` with the expected sha256: the file read in
    1 MiB chunks through a thread, hashed on the way, uploaded as 8 MiB parts, 2 in flight,
    aborted on a mismatch, with the sha256 as object metadata.

Peak RSS growth is measured as in :mod:`scripts.benchmarks.download` (``VmHWM``). Each object
is deleted after its run (moto keeps objects in memory). The numbers measure the receiver's
side against a local server; a real store's network sets the pace elsewhere.

``python -m scripts.benchmarks.media --child VARIANT --file F --bucket B --endpoint URL`` is
one run; it prints its result as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from scripts.benchmarks.download import maxrss_kib, peak_rss_kib, say_round, transfer_rows
from scripts.benchmarks.processes import PYTHON, child_env, run_json, started
from scripts.benchmarks.report import Report

NAME = "media"
MIB = 1024 * 1024
VARIANTS = ("obstore.put (plain)", "MediaStore.put_file")
BUCKET = "bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_REGION": "us-east-1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("media")
    group.add_argument("--media-mb", type=int, default=200,
                       help="media: file size in MiB (default 200)")
    group.add_argument("--media-repeat", type=int,
                       help="media: rounds over the variants (default 3, quick 1)")


async def upload(variant: str, file: Path, endpoint: str) -> dict[str, Any]:
    import obstore

    from receiver.media import ObjectMedia

    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    media = ObjectMedia(f"s3://{BUCKET}/bench", staging=file.parent, env=env)
    sha256 = _sha256(file) if variant == "MediaStore.put_file" else None
    key = f"{variant.split('.')[0].lower()}.bin"
    before, before_maxrss = peak_rss_kib(), maxrss_kib()
    began = time.perf_counter()
    if variant == "MediaStore.put_file":
        kept = await media.put_file(key, file, content_type="audio/wav", sha256=sha256)
        size = kept.size
    else:
        await asyncio.to_thread(obstore.put, media.store, key, file)
        size = file.stat().st_size  # noqa: ASYNC240 -- outside the timed part's hot path
    seconds = time.perf_counter() - began
    result = {"variant": variant, "bytes": size, "seconds": seconds,
              "rss_before_kib": before, "rss_peak_kib": peak_rss_kib(),
              "ru_maxrss_before_kib": before_maxrss, "ru_maxrss_after_kib": maxrss_kib()}
    held = await media.head(key)
    result["stored_bytes"] = held.size if held is not None else None
    await media.delete(key)
    return result


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while block := handle.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def _write(file: Path, size: int) -> None:
    block = os.urandom(MIB)
    with file.open("wb") as out:
        for _ in range(size // MIB):
            out.write(block)
        out.write(block[: size % MIB])


def run(options: argparse.Namespace, work: Path) -> Report:
    import httpx

    from tests.support import free_port

    size = options.media_mb * MIB
    repeat = options.media_repeat or (1 if options.quick else 3)
    file = work / "song.wav"
    _write(file, size)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with started(moto, env=child_env(), log=work / "moto.log"):
        for _ in range(300):
            try:
                httpx.put(f"{endpoint}/{BUCKET}", timeout=5).raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        for n in range(repeat):
            for variant in VARIANTS:
                argv = [PYTHON, "-m", "scripts.benchmarks.media", "--child", variant,
                        "--file", str(file), "--endpoint", endpoint]
                result = run_json(argv, env=child_env(), log=work / "child.log", timeout_s=300)
                if result["bytes"] != size or result["stored_bytes"] != size:
                    raise RuntimeError(f"{variant} kept {result['stored_bytes']} of {size} bytes")
                runs[variant].append(result)
                say_round(n, repeat, variant, size, result)
    file.unlink()
    summary, rows = transfer_rows(runs, size, VARIANTS[0])
    return Report(
        name=NAME,
        title=f"media: {options.media_mb} MiB into S3 (moto on loopback), fresh process each",
        columns=("variant", "MiB/s", "seconds", "MiB/s ÷ obstore.put",
                 "peak RSS growth MiB", "peak RSS MiB (VmHWM)"),
        rows=rows,
        notes=[f"median of {repeat} round(s); RSS growth is the largest seen.",
               "moto's server (Flask, one process) is the store: its speed bounds both rows."],
        data={"size_bytes": size, "summary": summary, "runs": runs},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.benchmarks.media")
    parser.add_argument("--child", choices=VARIANTS, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(upload(args.child, args.file, args.endpoint))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
