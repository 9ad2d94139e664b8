"""Multi-site simulations on one machine."""
