"""embedfleet."""
