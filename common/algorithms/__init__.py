"""Stateful strategies' shared halves: one module per algorithm with its record keys, its maths and its
site hook (what a site keeps between rounds and adds to training).

The ClientApp finds the run's hook through `registry.site_hook(strategy name)`; the server half (a Flower
Strategy in `strategies/`) imports the same module for the keys and the maths, so neither side imports
the other.
"""
