"""Reading the TOML files a person writes (site policy, CKD mapping, scenario) with errors that name them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fedward.common.errors import ConfigError


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The parsed document; a ConfigError such as "site policy /etc/p.toml: not valid TOML (...)"."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path}: not valid TOML ({exc})") from exc
