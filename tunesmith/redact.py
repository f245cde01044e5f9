"""Secrets out of everything tunesmith writes or shows: the one redaction function.

`redact` replaces API keys, Authorization headers, bearer tokens, credentials in URLs and `key=value` pairs whose
key names a secret, plus the exact values of environment variables named like secrets (`*_API_KEY`, `*_TOKEN`,
`*_SECRET`, `*_PASSWORD`) and of any value given to `register_secret` (e.g. the teacher's key, whatever its
variable is called). It is applied where text leaves the process: rejects files and manifests of prep steps, error
messages of the CLI, and tunesmith's log records (`redacting_logger`). Training data itself is never rewritten.

Hand-written: the detectors of secret-scanning tools (detect-secrets, trufflehog) scan repositories for findings;
none offers a small "redact this string" function without their plugin machinery.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8  # shorter values ("1", "false") would redact ordinary words

_SECRET_ENV_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(?:_|$)", re.I)
_NOT_DONE = r"(?!\[REDACTED\])"  # an already redacted value stays as it is (redacting twice changes nothing)
_VALUE = _NOT_DONE + r"[^\s\"'&,;)}\]]"
_PATTERNS = [
    # Authorization: Bearer xyz / "authorization": "Basic xyz" (the scheme is kept, the credential goes)
    re.compile(r"(?i)((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)"
               r"(?!(?:bearer|basic|token|digest)\s)(" + _VALUE + "{4,})"),
    re.compile(r"(?i)(\bbearer\s+)((?=[A-Za-z._~+/=-]*[0-9])[A-Za-z0-9._~+/=-]{8,})"),  # a token has a digit
    # key=value or "key": "value" where the key names a secret (api_key, x-api-key, access_token, password, ...)
    re.compile(r"(?i)(\b[\w-]{0,40}(?:api[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|client[_-]?secret|"
               r"secret[_-]?key|password|passwd|secret|token)[\"']?\s*[:=]\s*[\"']?)(" + _VALUE + "{8,})"),
    # user:password@host in URLs
    re.compile(r"(://[^/\s:@\"']{1,128}:)(" + _NOT_DONE + r"[^/\s@\"']{1,256})(?=@)"),
    # well-known key formats, wherever they appear
    re.compile(r"()\b((?:sk|rk|pk)-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|"
               r"github_pat_[A-Za-z0-9_]{30,}|hf_[A-Za-z0-9]{30,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|"
               r"AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20,})"),
]

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact this exact value from now on (a credential read from a variable whose name does not say so)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value)


def _known_values() -> list[str]:
    from_env = [v for k, v in os.environ.items() if _SECRET_ENV_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH]
    with _lock:
        values = set(from_env) | _registered
    return sorted(values, key=len, reverse=True)  # a longer secret first, should one contain another


def redact_text(text: str) -> str:
    for value in _known_values():
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def redact(value: Any) -> Any:
    """`value` with every secret replaced by [REDACTED]: a string, or the strings inside dicts and lists (keys kept)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Rewrites a log record's message (arguments merged) and its `extra` fields before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                setattr(record, key, redact(value))
        return True


def redacting_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` whose records are redacted: tunesmith's modules log through these."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
