"""Redaction: what may be shown of a URL or a text before it goes to a log line, an error
message or a stored error (``jobs.last_error``).

URLs carry credentials in three places: userinfo (``user:password@``), the query (presigned CDN
links: ``?X-Amz-Signature=...``; ntfy/apprise ``?token=...``) and the fragment. :func:`scrub_url`
keeps the scheme, host, port and path and marks what it removed, so a line still says which
server and which file it was about. :func:`scrub_text` does the same to every URL inside free
text and then blanks the process's known secrets (webhook secrets, the admin token, the API
key), registered once at start-up with :func:`register_secret`.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote

import httpx
import orjson

MASK = "***"
SECRET_MASK = "[secret]"  # noqa: S105 (what replaces a secret)
# Shorter values are not replaced wherever they occur: they would blank unrelated text.
MIN_SECRET_LENGTH = 8

# scheme://anything-up-to-whitespace-or-a-quote: http(s), json://, ntfy://, mailtos://...
_URL = re.compile(r"""\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>`]+""")

# scheme :// authority path ?query #fragment, as RFC 3986 cuts them (never fails to match).
_PARTS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#(.*))?\Z",
                    re.DOTALL)

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None
# The secrets as they appear in a line rendered by orjson (UTF-8, JSON-escaped), for clean().
_rendered: tuple[bytes, ...] = ()


def scrub_url(url: httpx.URL | str) -> str:
    """``url`` with its userinfo, query and fragment replaced by ``***``:
    ``https://u:p@cdn/a.mp3?sig=1#x`` → ``https://***@cdn/a.mp3?***#***``. Never fails: a URL
    that does not parse is cut the same way by its punctuation."""
    text = str(url)
    parts = _PARTS.match(text)
    if parts is None:
        return text if not any(c in text for c in "?#@") else MASK
    scheme, authority, path, query, fragment = parts.groups()
    _userinfo, at, hostport = authority.rpartition("@")
    out = f"{scheme}://{MASK + '@' if at else ''}{hostport}{path}"
    if query is not None:
        out += f"?{MASK}"
    if fragment is not None:
        out += f"#{MASK}"
    return out


def scrub_text(text: str) -> str:
    """``text`` with every URL in it scrubbed and every registered secret replaced by
    ``[secret]``."""
    if "://" in text:
        text = _URL.sub(lambda m: scrub_url(_trim(m.group(0))) + _trailer(m.group(0)), text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(SECRET_MASK, text)
    return text


def clean(rendered: bytes) -> bool:
    """Whether ``rendered`` (text rendered as JSON by orjson: UTF-8, with ``"``, ``\\`` and
    control characters escaped) holds no URL and no registered secret, so that
    :func:`scrub_text` would change none of the strings in it. Exact in that direction: a
    string with a URL or a secret in it renders with ``://`` or that secret's JSON form in
    it. (A match across two strings only costs the caller the careful path.)"""
    if b"://" in rendered:
        return False
    # a few substring searches: about twice as fast as one regex of the alternatives
    return all(form not in rendered for form in _rendered)


def url_secrets(url: str) -> list[str]:
    """The parts of a configured URL that are credentials even where :func:`scrub_url` keeps
    them: apprise-style notification URLs carry tokens in the host (``tgram://<bot token>/...``)
    and the path (``discord://<id>/<token>``, Slack webhooks). Returned: the URL itself, its
    userinfo and query values, and each host or path segment that looks like a token (12 or
    more characters, letters and digits mixed)."""
    parts = _PARTS.match(url)
    if parts is None:
        return []
    _, authority, path, query, fragment = parts.groups()
    userinfo, _, host = authority.rpartition("@")
    found = [url, *userinfo.split(":")]
    found += [v for pair in (query or "").split("&") for v in pair.split("=")[1:]]
    found += [fragment or ""]
    pieces = (host, *host.split(":"), *path.split("/"))
    found += [piece for piece in pieces if _looks_like_token(piece)]
    return [f for f in found if f]


def _looks_like_token(piece: str) -> bool:
    return (len(piece) >= 12 and any(c.isdigit() for c in piece)
            and any(c.isalpha() for c in piece))


def register_secret(*values: str | None) -> None:
    """Blank ``values`` (and their URL-encoded forms) in everything :func:`scrub_text` sees from
    now on. Empty values and values shorter than :data:`MIN_SECRET_LENGTH` are ignored."""
    global _secrets, _pattern, _rendered
    fresh = set()
    for value in values:
        if value and len(value) >= MIN_SECRET_LENGTH:
            fresh.update({value, quote(value, safe="")})
    with _lock:
        _secrets = _secrets | fresh
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial blanks
        _pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None
        _rendered = tuple({_json_form(s) for s in ordered})


def registered() -> frozenset[str]:
    """The registered secrets (for tests)."""
    return _secrets


def forget_secrets() -> None:
    """Drop every registered secret (tests, and a process that reconfigures)."""
    global _secrets, _pattern, _rendered
    with _lock:
        _secrets, _pattern, _rendered = frozenset(), None, ()


def _json_form(secret: str) -> bytes:
    """``secret`` as orjson writes it inside a string (a lone surrogate, which orjson cannot
    write, as its UTF-8 with surrogatepass: never found, and never rendered either)."""
    try:
        return orjson.dumps(secret)[1:-1]
    except orjson.JSONEncodeError:
        return secret.encode("utf-8", "surrogatepass")


def _trim(url: str) -> str:
    # A URL at the end of a sentence or inside brackets: keep the punctuation out of it.
    return url.rstrip(".,;:)]}")


def _trailer(url: str) -> str:
    return url[len(_trim(url)):]
