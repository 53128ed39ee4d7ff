"""Reading, validating, splitting and feeding interaction data."""
