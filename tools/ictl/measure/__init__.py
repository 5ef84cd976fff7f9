"""Measurement: `ictl bench` areas (bench_<area>.py, `run(fig, tmp, args)`)
and `ictl soak` campaigns (soak_<area>.py, `run(fig, args)`), found by name;
figures.py writes build/bench.json and build/soak.json, goals.py holds the
target each issue sets for a figure."""
