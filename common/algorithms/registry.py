"""The site-hook registry: the run's strategy name → its site half (`SiteHook`).

fedward's stateful strategies (SCAFFOLD, FedBN) are registered here; `register_site_hook` adds another
(its server half goes to `strategies.registry.register_strategy`). A strategy without a registered hook
(FedAvg, FedProx, the robust rules...) gets the plain hook: no site state, no correction.
"""

from __future__ import annotations

from fedward.common.algorithms.base import SiteHook
from fedward.common.algorithms.fedbn import FedBNSite
from fedward.common.algorithms.scaffold import ScaffoldSite
from fedward.common.errors import ConfigError

PLAIN = SiteHook()
_HOOKS: dict[str, SiteHook] = {"scaffold": ScaffoldSite(), "fedbn": FedBNSite()}


def register_site_hook(name: str, hook: SiteHook, *, replace: bool = False) -> SiteHook:
    """Make `hook` the site half of strategy `name`; a name already taken is a ConfigError unless
    `replace`."""
    if name in _HOOKS and not replace:
        raise ConfigError(f"strategy {name!r} already has a site hook ({type(_HOOKS[name]).__name__})")
    _HOOKS[name] = hook
    return hook


def unregister_site_hook(name: str) -> None:
    """Remove the site hook of strategy `name` (tests and plug-ins that registered one)."""
    _HOOKS.pop(name, None)


def site_hook(strategy: str) -> SiteHook:
    """The site half of the run's strategy (the plain hook when it keeps no site state)."""
    return _HOOKS.get(strategy, PLAIN)
