"""Credentials out of everything the run writes or logs: ``http://user:pass@host`` -> ``http://user:***@host``.

A tracking URI, an endpoint or a command line may carry a password, a token or a signed query; the run's
console, ``logs/rank-N.log``, ``summary.json``, ``trackers.json`` and provenance are read by people and
copied to buckets. ``redact`` masks the secret part of every URL in a text (the user name stays: it says
whose credentials were used); ``RedactFilter`` applies it to every log record. ``basic_auth`` splits a URL
into the URL without credentials and the ``Authorization`` header a client would send for them.
"""

from __future__ import annotations

import base64
import logging
import re
import urllib.parse
from typing import Optional

MASK = "***"
# scheme://userinfo@ : the userinfo is the user and, after the first ':', the password (or a token alone)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/?#@\s'\"]+)@")
# ?token=...&X-Amz-Signature=... : query parameters whose names say they are secrets
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&](?:[A-Za-z0-9_\-]*(?:token|password|passwd|secret|signature|credential|apikey|api_key)"
    r"[A-Za-z0-9_\-]*))=(?P<value>[^&#\s'\"]+)",
    re.IGNORECASE,
)


def _mask_info(m: re.Match) -> str:
    user, sep, _ = m.group("info").partition(":")
    return f"{m.group('scheme')}{user + ':' + MASK if sep else MASK}@"


def redact(text: str) -> str:
    """``text`` with the password (or lone token) of every URL and every secret-named query value masked."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(_mask_info, text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('key')}={MASK}", text)


def redact_obj(obj):
    """``redact`` applied to every string inside a JSON-like value (dicts, lists)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def basic_auth(url: str) -> tuple[str, Optional[str]]:
    """(url without its userinfo, the ``Authorization: Basic`` value for it or None), the way requests (and
    so the MLflow client) authenticates a ``http://user:pass@host`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


class RedactFilter(logging.Filter):
    """Masks credentials in a record's final message (the console and every rank log carry this filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string is logging's own error to report
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if redact(str(exc)) != str(exc):  # a traceback would print the URL again
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
