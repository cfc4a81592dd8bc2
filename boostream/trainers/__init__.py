"""The training backends, one module each, behind the interface in `base`."""

from __future__ import annotations

from boostream.trainers.base import Backend
from boostream.trainers.lightgbm import LightGBMTrainer
from boostream.trainers.warpgbm import WarpGBMTrainer


def create_trainers(lightgbm_threads: int) -> dict[str, Backend]:
    return {"lightgbm": LightGBMTrainer(lightgbm_threads), "warpgbm": WarpGBMTrainer()}
