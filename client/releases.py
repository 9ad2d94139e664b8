"""Noisy releases a site keeps: drawn once per data set, re-sent to every later run at no new privacy cost.

Re-sending the same noisy answer reveals nothing new (post-processing), while drawing afresh for every run
would let whoever sees two answers average the noise away. Files live beside the site's ledger, one JSON
file per data set and release name, readable by the site alone.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from fedward.common.errors import ConfigError

_SAFE = re.compile(r"[0-9a-z-]{1,80}")


class KeptReleases:
    """The site's kept releases under `folder` (a no-op store without one)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _file(self, fingerprint: str, name: str) -> Path | None:
        if self.folder is None:
            return None
        if not (_SAFE.fullmatch(fingerprint) and _SAFE.fullmatch(name)):
            raise ConfigError(f"bad release key {fingerprint!r}/{name!r}")
        return self.folder / f"{name}-{fingerprint}.json"

    def get(self, fingerprint: str | None, name: str) -> tuple[np.ndarray, float, float] | None:
        """(values, noise multiplier, bound) of the kept release, or None."""
        path = self._file(fingerprint, name) if fingerprint else None
        if path is None or not path.is_file():
            return None
        try:
            kept = json.loads(path.read_text())
            return (
                np.asarray(kept["values"], dtype=np.float64),
                float(kept["noise-multiplier"]),
                float(kept["bound"]),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"kept release {path} is unreadable ({exc}); restore it from backup") from exc

    def put(
        self, fingerprint: str | None, name: str, values: np.ndarray, noise_multiplier: float, bound: float
    ) -> None:
        """Keep a release (atomically, mode 0600)."""
        path = self._file(fingerprint, name) if fingerprint else None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        text = json.dumps({"values": values.tolist(), "noise-multiplier": noise_multiplier, "bound": bound})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        tmp.replace(path)
