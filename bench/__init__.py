"""``sentistream bench``: end-to-end throughput and latency on the real broker, with baselines."""
