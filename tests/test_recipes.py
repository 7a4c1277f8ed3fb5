"""The training recipes (export/train.py) are the ones the shipped bundle's manifest records, and a
command changes only what its user gave."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sentistream.export.train import RECIPES, TrainConfig, recipe
from sentistream.worker.bundle import Manifest, default_bundle_path

# where this machine ran it, not how: the manifest keeps them, a recipe leaves them to the user
MACHINE = ("base_model", "out_dir", "threads", "device")


def _recipe_fields(name: str) -> dict:
    cfg = recipe(name, base_model="base", out_dir=Path("out"))
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in MACHINE}


def _recorded(config: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k not in MACHINE}


def test_the_student_recipe_is_the_shipped_bundles() -> None:
    training = Manifest.read(default_bundle_path()).training
    assert _recipe_fields("student") == _recorded(training["config"])


def test_the_teacher_recipe_is_the_shipped_bundles_teacher() -> None:
    recorded = _recorded(Manifest.read(default_bundle_path()).training["teacher"]["config"])
    # the teacher's transfer sources are not its recipe: it labels the whole transfer set (export/distill.py)
    recorded.pop("transfer_sources")
    assert {k: v for k, v in _recipe_fields("teacher").items() if k != "transfer_sources"} == recorded


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_options_not_given_come_from_the_recipe(name: str) -> None:
    cfg = recipe(name, base_model="b", out_dir=Path("o"), epochs=None, learning_rate=2e-5, seed=None)
    assert cfg.learning_rate == 2e-5
    assert cfg.epochs == RECIPES[name].get("epochs", TrainConfig.epochs)
    assert cfg.seed == RECIPES[name].get("seed", TrainConfig.seed)
