"""Secrets out of sight: values of secret-looking keys become `***` in plans, reports, journals."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# The one rule for "this key holds a secret", for config, .env, plans, reports and journals:
# MEMORY_DB_PASSWORD, db_admin.password, ANTHROPIC_API_KEY, TELEGRAM_BOT_TOKEN, SECRET_KEY_BASE,
# DB_PASS, ... as a whole word of the key (so not `keyboard` or `monkey_count`).
_SECRET_KEY = re.compile(r"(^|[_.-])(pass(word|wd|phrase)?|secrets?|tokens?|credentials?|private"
                         r"|keys?)($|[_.-])|api_?key", re.IGNORECASE)


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


def secret_values(*envs: Mapping[str, str] | None, extra: Iterable[str] = ()) -> list[str]:
    """The values of the secret-looking keys of `envs` (and `extra`), for mask_text."""
    found = {v for env in envs if env for k, v in env.items() if is_secret_key(k) and v}
    found.update(x for x in extra if x)
    return [x for x in found if len(x) >= 3]


def mask_text(text: str, secrets: list[str]) -> str:
    """`text` with every occurrence of each (non-trivial) secret replaced by the mask."""
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
