"""relay's benchmarks (`make bench`)."""
