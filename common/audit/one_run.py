"""The ε lower bound of a one-run audit (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023, arXiv 2305.08846).

m canaries are each included with probability ½ by a secret coin. The adversary guesses "in" for the
canaries with the highest scores and "out" for those with the lowest, abstaining on the rest. Under
(ε, δ)-DP, the number of correct guesses among r is stochastically dominated by Binomial(r, e^ε/(1+e^ε))
plus a δ term (their Theorem 5.2); an ε whose p-value falls below the significance is refuted, and the
largest refuted ε is the lower bound. Choosing the number of guesses after seeing the scores would
invalidate the confidence, so a fixed list of guess counts is tried with a Bonferroni correction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom

GUESS_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)  # of the m canaries, split evenly into "in" and "out"


def p_value(m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Probability of at least `correct` right guesses out of `guesses` (m canaries) under (ε, δ)-DP."""
    p = float(expit(epsilon))
    beta = float(binom.sf(correct - 1, guesses, p))
    if delta == 0 or correct == 0:
        return min(beta, 1.0)
    i = np.arange(1, correct + 1)
    alpha = float(np.max((binom.sf(correct - i - 1, guesses, p) - beta) / i, initial=0.0))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, guesses: int, correct: int, delta: float, significance: float) -> float:
    """The largest ε that `correct` of `guesses` right refutes at `significance` (0 when none is)."""
    if guesses == 0 or p_value(m, guesses, correct, 0.0, delta) > significance:
        return 0.0

    def refuted(eps: float) -> float:
        return significance - p_value(m, guesses, correct, eps, delta)

    high = 1.0
    while refuted(high) > 0:
        if high > 64:  # every guess right with r large: beyond any ε anyone claims
            return high
        high *= 2
    return float(brentq(refuted, 0.0, high, xtol=1e-6))


@dataclass(frozen=True)
class AuditBound:
    """The audit's result: the lower bound and the guess count that gave it."""

    epsilon: float
    guesses: int
    correct: int
    canaries: int
    confidence: float


def audit_bound(
    scores: Sequence[float],
    included: Sequence[bool],
    *,
    delta: float,
    confidence: float = 0.95,
    shares: Sequence[float] = GUESS_SHARES,
) -> AuditBound:
    """ε lower bound from the adversary's `scores` (higher: more likely in) and the true coins.

    For each share s, the adversary guesses "in" for the top s·m/2 scores and "out" for the bottom s·m/2;
    each guess count is tested at (1 − confidence) / len(shares) (Bonferroni), the best bound is kept.
    """
    score = np.asarray(scores, dtype=np.float64)
    coin = np.asarray(included, dtype=bool)
    m = len(score)
    if m != len(coin) or m < 2:
        raise ValueError(f"scores and coins must have the same length >= 2, got {m} and {len(coin)}")
    order = np.argsort(score, kind="stable")
    significance = (1.0 - confidence) / len(shares)
    best = AuditBound(0.0, 0, 0, m, confidence)
    for share in shares:
        half = max(1, int(share * m) // 2)
        out, into = order[:half], order[m - half :]
        correct = int(np.sum(coin[into]) + np.sum(~coin[out]))
        eps = epsilon_lower_bound(m, 2 * half, correct, delta, significance)
        if eps > best.epsilon:
            best = AuditBound(eps, 2 * half, correct, m, confidence)
    return best
