"""One wording for pydantic validation errors: `where: problem`, with the keys as the person wrote them.

Every file a person writes (run config, site policy, CKD mapping, scenario) is checked by a pydantic model;
its `ValidationError` becomes the project's one-line `ConfigError` text through `validation_problems`.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from pydantic_core import ErrorDetails


class KeyedValueError(ValueError):
    """A validator's problem with one entry of a table (`units.sc`), so the message names the entry."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def validation_problems(
    exc: ValidationError,
    *,
    prefix: str = "",
    origin: Mapping[str, str] | None = None,
    unknown_key: str = "unknown key",
) -> list[str]:
    """`where: problem` for each of the exception's errors (join them with `; ` for one line).

    `prefix` is the table the model was read from (`policy`), `origin` renames a top-level key to where the
    person set it (a scenario's run-config keys), `unknown_key` is the text for a key the model forbids.
    """
    return [_describe(e, prefix, origin or {}, unknown_key) for e in exc.errors()]


def _describe(error: ErrorDetails, prefix: str, origin: Mapping[str, str], unknown_key: str) -> str:
    loc = [str(part) for part in error["loc"]]
    if loc and loc[0] in origin:
        loc[0] = origin[loc[0]]
    where = ".".join([prefix, *loc] if prefix else loc) or "(top level)"
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedValueError):
        return f"{where}.{cause.key}: {cause}"
    if error["type"] == "extra_forbidden":
        return f"{where}: {unknown_key}"
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    got = f" (got {error['input']!r})" if error["loc"] else ""  # not the whole document
    return f"{where}: {error['msg']}{got}"
