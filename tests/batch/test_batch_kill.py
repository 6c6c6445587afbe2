"""kill -9 during a batch job, then a re-run: exactly one row per image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from models_store.store import ModelStore
from service.batch.output import read_output
from tests.conftest import tiny_card, tiny_classifier

IMAGES = 40


def test_kill_then_rerun_gives_one_row_per_image(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ModelStore(store).add(tiny_classifier(), tiny_card())
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(IMAGES):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            images / f"{k:03d}.png"
        )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "service.cli", "--store", str(store), "batch", "explain",
               "--model", "tiny", "--input", str(images), "--output", str(out),
               "--engine", "local", "--shard-size", "1", "-q"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    while not list((out / "shards").glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list((out / "shards").glob("part-*.parquet")))
    assert 0 < finished < IMAGES, finished  # killed halfway, after the first shard
    subprocess.run(command, env=env, check=True)
    paths = read_output(out).column("path").to_pylist()
    assert sorted(paths) == [f"{k:03d}.png" for k in range(IMAGES)]
