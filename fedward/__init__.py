"""fedward: federated learning for hospitals on Flower.

Every module lives under this one import name: `fedward.common`, `fedward.server`, `fedward.client`,
`fedward.strategies`, `fedward.simulations` (and `fedward.cli`), so nothing fedward installs can collide
with another distribution's top-level `common` or `server`, nor with a module of that name Flower has
already loaded.
The concept folders stay at the repository's top level: an installed wheel maps them under `fedward/`
(setup.py), and in a source tree — a checkout, an editable install, an unpacked app bundle (FAB) — this
package extends its search path to the folder beside it, so `fedward.server` is `../server/`.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CONCEPTS = ("common", "server", "client", "strategies", "simulations")
"""The project's concept folders, importable as `fedward.<name>`."""

_here = Path(__file__).resolve().parent
_source_tree = all((_here.parent / name / "__init__.py").is_file() for name in CONCEPTS)
if _source_tree and not (_here / "common").is_dir():
    __path__.append(str(_here.parent))  # source tree: the concept folders sit beside this package

try:
    __version__ = version("fedward")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
