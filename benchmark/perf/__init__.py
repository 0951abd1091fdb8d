"""Performance benchmarks of the jobs (each a runnable module with a --quick smoke flag)."""
