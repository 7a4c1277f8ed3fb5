"""sentistream worker runtime: Kafka in, ONNX micro-batches, Kafka out. Never imports torch."""

__version__ = "0.1.0"
