"""yolopose benchmarks: scripts that print figures; run ``python -m benchmarks`` for all of them."""
