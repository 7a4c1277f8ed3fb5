"""Logging setup: one line per event, with the process's name; kafka-python kept quiet."""

from __future__ import annotations

import logging


def setup_logging(level: str = "INFO", name: str = "sentistream") -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)
