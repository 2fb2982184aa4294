"""One masking of secrets for everything cxr-orchestra writes down: MLflow params and tags, the
resolved-config artifact, checkpoints' run.json, console lines and error messages.

Masked: the user-info part of any URI (`https://alice:pw@host` -> `https://***@host`), secret-looking
query parameters (`?token=...`), and the value of any key that looks secret (token, password, ...).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any, TextIO

MASK = "***"
_SECRET_WORDS = r"token|password|passwd|secret|credential|api_?key|auth"
_SECRET_KEY = re.compile(_SECRET_WORDS, re.IGNORECASE)
_URI_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_QUERY = re.compile(rf"([?&;][^=&;\s]*(?:{_SECRET_WORDS})[^=&;\s]*=)[^&;\s]+", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(str(key)))


def mask_text(text: str) -> str:
    """`text` with URI credentials and secret query values replaced by ***."""
    return _SECRET_QUERY.sub(rf"\g<1>{MASK}", _URI_USERINFO.sub(f"{MASK}@", text))


def masked(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with secrets masked."""
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) and v not in (None, "") else masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


class MaskedStream(io.TextIOBase):
    """A text stream that masks secrets in what it writes to `target()` (looked up at each write,
    so it follows a stream that is swapped, as test runners do)."""

    def __init__(self, target: Callable[[], TextIO]):
        self._target = target

    def write(self, text: str) -> int:
        self._target().write(mask_text(text))
        return len(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return self._target().isatty()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._target(), "encoding", "utf-8")
