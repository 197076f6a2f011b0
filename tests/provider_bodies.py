"""The providers' callback and poll bodies as their docs show them (receiver/providers), and
their signatures, for tests: sunoapi.org's shape (kie.ai's and apibox's too), PiAPI's task,
AIMLAPI's generation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from receiver.config import ProvidersTable
from receiver.conversion import convert

PATH_SECRET = "path-secret-0123456789abcdefXYZ"
HMAC_KEY = "kie-hmac-key-0123456789"
PIAPI_SECRET = "piapi-secret-0123456789abc"
AIMLAPI_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


def providers_table(**tables: dict[str, Any]) -> ProvidersTable:
    """A ``[providers]`` table as the config file would give it."""
    converted: ProvidersTable = convert(tables, ProvidersTable, path="providers")
    return converted


def suno_clip(clip_id: str, *, audio: str | None = "http://cdn/{id}.mp3",
              stream: str | None = "http://cdn/stream/{id}", camel: bool = False,
              duration: Any = 198.44, **extra: Any) -> dict[str, Any]:
    """A clip of sunoapi.org's callback (``camel``: with the camelCase names some send)."""
    names = ({"audio": "audioUrl", "stream": "streamAudioUrl", "image": "imageUrl",
              "model": "modelName", "created": "createTime"} if camel else
             {"audio": "audio_url", "stream": "stream_audio_url", "image": "image_url",
              "model": "model_name", "created": "createTime"})
    item: dict[str, Any] = {
        "id": clip_id,
        names["audio"]: (audio or "").format(id=clip_id),
        names["stream"]: (stream or "").format(id=clip_id),
        names["image"]: f"http://cdn/{clip_id}.jpeg",
        "prompt": "[Verse] Night city lights shining bright",
        names["model"]: "chirp-v3-5",
        "title": "Iron Man",
        "tags": "electrifying, rock",
        names["created"]: "2025-01-01 00:00:00",
        "duration": duration,
        **extra,
    }
    if not camel:
        item.update(source_audio_url=item["audio_url"],
                    source_stream_audio_url=item["stream_audio_url"],
                    source_image_url=item["image_url"])
    return item


def suno(stage: str | None, task_id: str = "t-1", clips: Sequence[dict[str, Any]] = (), *,
         code: int = 200, msg: str = "All generated successfully.", camel: bool = False,
         **data: Any) -> bytes:
    """A sunoapi.org callback: ``{code, msg, data: {callbackType, task_id, data: [...]}}``."""
    envelope: dict[str, Any] = {("taskId" if camel else "task_id"): task_id, **data}
    if stage is not None:
        envelope["callbackType"] = stage
    if clips or stage in ("text", "first", "complete"):
        envelope["data"] = list(clips)
    return json.dumps({"code": code, "msg": msg, "data": envelope}).encode()


def record_info(status: str, task_id: str = "t-1", clips: Sequence[dict[str, Any]] = (), *,
                error_code: int | None = None, error_message: str | None = None) -> bytes:
    """sunoapi.org's ``GET /api/v1/generate/record-info`` answer (camelCase clips)."""
    return json.dumps({"code": 200, "msg": "success", "data": {
        "taskId": task_id, "parentMusicId": "", "param": "{}",
        "response": {"taskId": task_id, "sunoData": list(clips)},
        "status": status, "type": "GENERATE", "errorCode": error_code,
        "errorMessage": error_message}}).encode()


def piapi_clip(clip_id: str, status: str = "complete", **extra: Any) -> dict[str, Any]:
    return {"id": clip_id, "status": status, "title": "Night city",
            "audio_url": f"http://cdn/{clip_id}.mp3", "image_url": f"http://cdn/{clip_id}.png",
            "video_url": "", "model_name": "chirp-v4",
            "metadata": {"tags": "rock", "prompt": "[Verse] lights", "duration": 120.5},
            **extra}


def piapi(status: str, task_id: str = "p-1", clips: Sequence[dict[str, Any]] = (), *,
          error: dict[str, Any] | None = None, keyed: bool = True) -> bytes:
    """A PiAPI task callback: ``{timestamp, data: {task_id, model, task_type, status, input,
    output, error}}`` (``keyed``: the output's clips an object keyed by id, else a list)."""
    output = ({c["id"]: c for c in clips} if keyed else list(clips)) if clips else None
    return json.dumps({"timestamp": 1_700_000_000, "data": {
        "task_id": task_id, "model": "music-s", "task_type": "generate_music",
        "status": status, "input": {"gpt_description_prompt": "night city"},
        "output": {"clips": output} if output is not None else {},
        "error": error or {"code": 0, "message": ""}}}).encode()


def aimlapi(status: str, generation_id: str = "g-1", *, url: str | None = "http://cdn/g.mp3",
            error: Any = None, envelope: bool = True) -> bytes:
    """An AIMLAPI generation event (the shape the receiver reads: see its adapter)."""
    generation: dict[str, Any] = {"id": generation_id, "status": status}
    if url is not None:
        generation["audio_file"] = {"url": url, "content_type": "audio/mpeg"}
    if error is not None:
        generation["error"] = error
    body = {"type": f"generation.{status}", "data": generation} if envelope else generation
    return json.dumps(body).encode()
