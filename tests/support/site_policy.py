"""The site policy the tests write: one text, with the values a test cares about changed."""

from __future__ import annotations


def policy_text(epsilon_cap: float = 8.0, delta: float = 1e-3, **extra: object) -> str:
    """A valid `[policy]` TOML for a CKD site (keys of `extra` in kebab-case, values as TOML)."""
    lines = [
        "[policy]",
        f"epsilon-cap = {epsilon_cap}",
        f"delta = {delta}",
        "clipping-min = 0.1",
        "clipping-max = 5.0",
        'allowed-tasks = ["ckd"]',
        "min-samples = 10",
    ]
    lines += [f"{key.replace('_', '-')} = {_toml(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    return (
        f'"{value}"'
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )
