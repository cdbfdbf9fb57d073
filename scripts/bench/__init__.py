"""Benchmarks and the soak test: `python -m scripts.bench.<name> --help` from the repository root
(line, peers, predict, stages, load_predict, soak). They need the bench extra (psutil), wrk for
the HTTP load levels, mosquitto for the line."""
