"""distillery."""
