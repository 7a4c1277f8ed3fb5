"""``sentistream bench``: end-to-end throughput and latency on the real broker, with baselines; and
what the tooling shares about running workers (``worker_process.py``: a worker's command line,
``scrape.py``: its /metrics), used by the benchmarks, the demo, ``top`` and the tests."""
