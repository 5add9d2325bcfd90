"""Benchmarks: clawdie-ops against the runbook\x27s way (`nox -s bench`)."""
