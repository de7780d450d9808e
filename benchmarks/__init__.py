"""Side-by-side benchmarks: each ``bench_*.py`` module measures funcdl against a peer in one run."""
