"""Secrets out of sight: values of secret-looking keys become `***` in plans, reports, journals."""
from __future__ import annotations

import re
from typing import Any

MASK = "***"

# MEMORY_DB_PASSWORD, db_admin.password, ANTHROPIC_API_KEY, TELEGRAM_BOT_TOKEN, ...
_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|credential|private|(^|_)key)$|api_?key",
                         re.IGNORECASE)


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def masked(value: Any) -> Any:
    """A copy of `value` (dicts, lists, scalars) with every secret-looking key's value masked."""
    if isinstance(value, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else masked(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    return value


def mask_text(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of each (non-trivial) secret replaced by the mask."""
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
