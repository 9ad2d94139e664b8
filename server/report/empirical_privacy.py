"""summary.json's "empirical-privacy" (written by `fedward sim audit`, simulations/audit.py) as the report and
the model card read it, and the words both use to explain it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedward.common.errors import ConfigError

SUMMARY_KEY = "empirical-privacy"

ADVERSARY_NAMES = {
    "coordinator": "coordinator (sees the site's update every round)",
    "final-model": "recipient of the final model",
    "coordinator-knowing-seed": "coordinator who knows the run seed (seeded-noise switch)",
}
ATTACK_NAMES = {"loss": "loss", "lira-offline": "LiRA (offline)"}


@dataclass(frozen=True)
class AdversaryBound:
    """One adversary's ε lower bound and the guesses that gave it."""

    name: str
    epsilon: float
    guesses: int
    correct: int

    @property
    def label(self) -> str:
        """The adversary in words."""
        return ADVERSARY_NAMES.get(self.name, self.name)


@dataclass(frozen=True)
class MembershipInference:
    """Membership-inference attack on the final model: AUC and TPR at low FPR."""

    auc: float
    tpr_at_fpr: dict[float, float | None]  # FPR → TPR; None: too few non-members to measure it
    members: int
    non_members: int
    attack: str | None

    def tpr_text(self, fpr: float) -> str:
        """The TPR at `fpr` with three decimals, or why it could not be measured."""
        tpr = self.tpr_at_fpr.get(fpr)
        if tpr is None:
            return f"n/a (needs ≥ {needed_non_members(fpr)} non-members)"
        return f"{tpr:.3f}"


@dataclass(frozen=True)
class EmpiricalPrivacy:
    """A canary audit of one site, and membership inference on the final model."""

    method: str
    site: str
    claimed_epsilon: float | None  # None: DP was off, nothing is claimed
    claimed_delta: float | None
    dp: bool
    seeded_noise: bool
    canaries: int | None
    canaries_included: int | None
    confidence: float
    adversaries: list[AdversaryBound]
    epsilon_lower_bound: float
    leak: bool
    membership: MembershipInference | None


def needed_non_members(fpr: float) -> int:
    """The fewest non-members at which a TPR at `fpr` can be measured (one false positive allowed)."""
    return math.ceil(round(1.0 / fpr, 9))


def percent(fraction: float) -> str:
    """0.001 → "0.1 %"."""
    return f"{100 * fraction:g} %"


class _Reader:
    """Reads fields of the audit, naming the file and the field in every error."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, field: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.source}: '{SUMMARY_KEY}.{field}': expected {expected}")

    def obj(self, data: Any, field: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(field, "an object")
        return data

    def _where(self, field: str, key: str) -> str:
        return f"{field}.{key}" if field else key

    def maybe_number(self, data: dict[str, Any], key: str, field: str) -> float | None:
        """A finite or infinite number, or None when the key is null or absent."""
        return None if data.get(key) is None else self.number(data, key, field)

    def number(self, data: dict[str, Any], key: str, field: str) -> float:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.fail(self._where(field, key), "a number")
        return float(value)

    def maybe_count(self, data: dict[str, Any], key: str, field: str) -> int | None:
        return None if data.get(key) is None else self.count(data, key, field)

    def count(self, data: dict[str, Any], key: str, field: str) -> int:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise self.fail(self._where(field, key), "a whole number ≥ 0")
        if value != int(value):
            raise self.fail(self._where(field, key), "a whole number ≥ 0")
        return int(value)

    def flag(self, data: dict[str, Any], key: str, field: str, default: bool | None = None) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(self._where(field, key), "true or false")
        return value


def _membership(reader: _Reader, data: Any) -> MembershipInference:
    mia = reader.obj(data, "membership-inference")
    field = "membership-inference"
    tprs = reader.obj(mia.get("tpr-at-fpr", {}), f"{field}.tpr-at-fpr")
    at: dict[float, float | None] = {}
    for key in tprs:
        try:
            fpr = float(key)
        except ValueError:
            raise reader.fail(f"{field}.tpr-at-fpr", f"FPRs as keys, such as '0.01', got {key!r}") from None
        if not 0 < fpr < 1:
            raise reader.fail(f"{field}.tpr-at-fpr", f"FPRs in (0, 1) as keys, got {key!r}")
        at[fpr] = reader.maybe_number(tprs, key, f"{field}.tpr-at-fpr")
    attack = mia.get("attack")
    if attack is not None and not isinstance(attack, str):
        raise reader.fail(f"{field}.attack", 'a string such as "loss" or "lira-offline"')
    return MembershipInference(
        auc=reader.number(mia, "auc", field),
        tpr_at_fpr=dict(sorted(at.items())),
        members=reader.count(mia, "members", field),
        non_members=reader.count(mia, "non-members", field),
        attack=attack,
    )


def read_empirical_privacy(summary: dict[str, Any] | None, source: Path) -> EmpiricalPrivacy | None:
    """The audit in summary.json (`source` names the file in errors); None when no audit ran."""
    if not summary or summary.get(SUMMARY_KEY) is None:
        return None
    reader = _Reader(source)
    data = reader.obj(summary[SUMMARY_KEY], "")
    claimed = reader.obj(data.get("claimed", {}), "claimed")
    adversaries = reader.obj(data.get("adversaries"), "adversaries")
    if not adversaries:
        raise reader.fail("adversaries", "at least one adversary")
    bounds = []
    for name, entry in adversaries.items():
        field = f"adversaries.{name}"
        entry = reader.obj(entry, field)
        bounds.append(
            AdversaryBound(
                name=str(name),
                epsilon=reader.number(entry, "epsilon-lower-bound", field),
                guesses=reader.count(entry, "guesses", field),
                correct=reader.count(entry, "correct", field),
            )
        )
    known = list(ADVERSARY_NAMES)  # the known adversaries first, in a fixed order; any others after them
    bounds.sort(key=lambda b: known.index(b.name) if b.name in known else len(known))
    overall = reader.maybe_number(data, "epsilon-lower-bound", "")
    mia = data.get("membership-inference")
    return EmpiricalPrivacy(
        method=str(data.get("method") or "canary audit"),
        site=str(data.get("site") or "?"),
        claimed_epsilon=reader.maybe_number(claimed, "epsilon", "claimed"),
        claimed_delta=reader.maybe_number(claimed, "delta", "claimed"),
        dp=reader.flag(claimed, "dp", "claimed", default=claimed.get("epsilon") is not None),
        seeded_noise=reader.flag(claimed, "dp-seeded-noise", "claimed", default=False),
        canaries=reader.maybe_count(data, "canaries", ""),
        canaries_included=reader.maybe_count(data, "canaries-included", ""),
        confidence=reader.maybe_number(data, "confidence", "") or 0.95,
        adversaries=bounds,
        epsilon_lower_bound=max(b.epsilon for b in bounds) if overall is None else overall,
        leak=reader.flag(data, "leak", ""),
        membership=None if mia is None else _membership(reader, mia),
    )


def claimed_text(audit: EmpiricalPrivacy) -> str:
    """The claimed ε in words: its value, or that DP was off."""
    return "none (DP off)" if audit.claimed_epsilon is None else f"{audit.claimed_epsilon:.2f}"


def guesses_text(bound: AdversaryBound) -> str:
    """Correct guesses of all guesses made, as "317 / 480 (66 %)"."""
    share = f" ({100 * bound.correct / bound.guesses:.0f} %)" if bound.guesses else ""
    return f"{bound.correct} / {bound.guesses}{share}"


def membership_text(mia: MembershipInference) -> str:
    """One sentence: the attack, its AUC, its TPR at each low FPR, and the counts."""
    attack = f"{ATTACK_NAMES.get(mia.attack, mia.attack)} attack" if mia.attack else "attack"
    tprs = ", ".join(f"TPR at {percent(fpr)} FPR {mia.tpr_text(fpr)}" for fpr in mia.tpr_at_fpr)
    return (
        f"Membership inference on the final model ({attack}, {mia.members} training records as members "
        f"against {mia.non_members} held-out records as non-members): AUC {mia.auc:.3f} (0.5 is guessing)"
        + (f"; {tprs}." if tprs else ".")
    )


def leak_text(audit: EmpiricalPrivacy) -> str | None:
    """The warning when the measured bound exceeds the claimed ε; None otherwise."""
    if not audit.leak:
        return None
    claimed = "" if audit.claimed_epsilon is None else f" {audit.claimed_epsilon:.2f}"
    return (
        f"Leak: the measured lower bound ε ≥ {audit.epsilon_lower_bound:.2f} exceeds the claimed ε{claimed} "
        f"at {audit.site}. The implementation or configuration of this run leaks more than its privacy "
        "guarantee allows: do not rely on the claimed ε."
    )


def explanation(audit: EmpiricalPrivacy) -> list[str]:
    """Sentences a privacy officer can use: what the bound means beside the claimed ε."""
    planted = f"{audit.canaries} canaries" if audit.canaries else "canaries"
    sentences = [
        f"The audit planted {planted} in the training of {audit.site}, each used or not by a secret coin, "
        "and measured how well an adversary tells which were used: the result is a lower bound on ε at "
        f"{percent(audit.confidence)} confidence, evidence of how much does leak, not proof of how little.",
    ]
    if audit.claimed_epsilon is None:
        sentences.append(
            "This run used no differential privacy, so no ε is claimed and nothing limits what the model "
            "reveals; the bound shows how much an adversary can already learn."
        )
    else:
        sentences.append(
            f"The guarantee is the claimed ε = {audit.claimed_epsilon:.2f}, which follows from the DP "
            "accounting, not from this audit. A bound far below the claim is expected, because the canary "
            "audit is conservative; a bound above it means the implementation or configuration leaks."
        )
    if audit.seeded_noise:
        sentences.append(
            "The research switch dp-seeded-noise was on: whoever knows the run seed can replay and remove "
            "the DP noise, so the claimed ε does not hold against them."
        )
    return sentences
