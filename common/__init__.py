"""fedward: federated learning for hospitals."""
