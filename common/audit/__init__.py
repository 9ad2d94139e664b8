"""Empirical privacy audits: canaries, the one-run ε lower bound, membership-inference metrics."""
