"""Aggregation strategies built on flwr.serverapp.strategy."""
