"""Site data: validation and loading."""
