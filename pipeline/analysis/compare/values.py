"""Config values as the comparison sees them: markers for inactive and absent keys, the canonical
form in which values are compared, and the way a value is shown to the user."""

from __future__ import annotations

import json
from typing import Any

# Groups switched off by ``<group>.enabled: false``: their other keys hold schema defaults that
# the run does not use (a run without DP still has privacy.epsilon: 8.0), shown as ``-``.
SWITCHED_GROUPS = ("privacy", "encryption")
MISSING = "-"


class _Inactive:
    """The value of a key of a switched-off group (see :data:`SWITCHED_GROUPS`)."""

    def __repr__(self) -> str:
        return "<inactive>"


INACTIVE = _Inactive()
ABSENT = object()  # a key a run's config does not have


def mask_inactive(flat: dict[str, Any]) -> dict[str, Any]:
    """Replace the keys of switched-off groups (``privacy.enabled: false`` ...) by :data:`INACTIVE`,
    so that unused defaults (a no-DP run's privacy.epsilon) are neither shown nor compared."""
    masked = dict(flat)
    for group in SWITCHED_GROUPS:
        if flat.get(f"{group}.enabled") is False:
            for key in flat:
                if key.startswith(f"{group}.") and key != f"{group}.enabled":
                    masked[key] = INACTIVE
    return masked


def canon(value: Any) -> Any:
    """A hashable form in which 8 and 8.0 are equal and lists / mappings compare by content."""
    if isinstance(value, bool) or value is None or value is INACTIVE or value is ABSENT:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(canon(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), canon(v)) for k, v in value.items()))
    return str(value)


def show_value(value: Any) -> str:
    """A config value as a user would type it (true, null, [16, 32])."""
    if value is ABSENT or value is INACTIVE:
        return MISSING
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)
