"""Batch explain on a real local Ray: Parquet rows equal the HTTP API's answers."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from models_store.store import ModelStore
from service.app import create_app
from service.batch.output import read_output, shard_path
from service.batch.run import run_job
from service.batch.work import Job
from service.settings import Settings
from tests.conftest import tiny_card, tiny_classifier

SAMPLES = Path(__file__).resolve().parents[2] / "service" / "samples"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("batch")
    store = root / "store"
    ModelStore(store).add(tiny_classifier(), tiny_card())
    images = root / "images"
    for sample in sorted(SAMPLES.glob("*.jpg")):
        photo = Image.open(sample).convert("RGB")
        w, h = photo.size
        variants = {
            "full": photo.resize((64, 48)),
            "flip": ImageOps.mirror(photo).resize((40, 40)),
            "crop": photo.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).resize((32, 32)),
        }
        for name, image in variants.items():
            path = images / sample.stem / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
    (images / "corrupt-a.jpg").write_bytes(b"not an image at all")
    (images / "corrupt-b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return store, images


@pytest.fixture(scope="module")
def ray_session() -> object:
    import ray

    from service.batch.run import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _api_maps(store: Path, images: Path) -> dict[str, np.ndarray]:
    out = {}
    with TestClient(create_app(Settings(store=store, monitoring=False, sampling=False))) as c:
        for path in sorted(images.rglob("*.png")):
            if path.name.startswith("corrupt"):
                continue
            body = {
                "images": [base64.b64encode(path.read_bytes()).decode()],
                "method": "gradcam",
                "outputs": ["array", "stats"],
            }
            r = c.post("/v1/models/tiny/explain", json=body)
            assert r.status_code == 200, r.text
            array = r.json()["results"][0]["array"]
            values = np.frombuffer(base64.b64decode(array["data"]), dtype="<f4")
            out[path.relative_to(images).as_posix()] = values.reshape(array["shape"])
    return out


def _check(table: object, expected: dict[str, np.ndarray]) -> None:
    rows = table.to_pylist()  # type: ignore[attr-defined]
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == len(expected) + 2  # one row per image
    errors = {r["path"]: r["error"] for r in rows if r["error"] is not None}
    assert set(errors) == {"corrupt-a.jpg", "corrupt-b.png"}
    for row in rows:
        if row["error"] is None:
            got = np.asarray(row["map"], dtype=np.float32).reshape(row["map_shape"])
            np.testing.assert_allclose(got, expected[row["path"]], atol=1e-5)
            assert row["prediction"] == row["target"]  # targets default to top-1


def test_local_and_ray_equal_the_http_api(
    dataset: tuple[Path, Path], ray_session: object, tmp_path: Path
) -> None:
    store, images = dataset
    expected = _api_maps(store, images)
    job = Job("tiny", {"method": "gradcam"}, store)
    local = run_job(job, images, tmp_path / "local", shard_size=4, progress=False)
    assert local["images"] == len(expected) + 2
    _check(read_output(tmp_path / "local"), expected)

    ray_out = tmp_path / "ray"
    run_job(job, images, ray_out, engine="ray", shard_size=4, actors=2, progress=False)
    _check(read_output(ray_out), expected)

    # resumable: drop one shard, re-run: only it is redone, still one row per image
    shard_path(ray_out, 1).unlink()
    again = run_job(job, images, ray_out, engine="ray", shard_size=4, actors=1, progress=False)
    assert again["images"] == 4
    _check(read_output(ray_out), expected)


def test_manifest_labels_are_the_targets(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    store, images = dataset
    files = sorted(p for p in images.rglob("*.png") if not p.name.startswith("corrupt"))[:3]
    manifest = tmp_path / "m.csv"
    lines = ["path,label"] + [
        f"{p},{lab}" for p, lab in zip(files, ["red", "2", "purple"], strict=True)
    ]
    manifest.write_text("\n".join(lines) + "\n")
    run_job(Job("tiny", {"method": "gradcam"}, store), manifest, tmp_path / "o", progress=False)
    rows = read_output(tmp_path / "o").to_pylist()
    assert [r["target"] for r in rows[:2]] == [0, 2]
    assert rows[2]["error"] is not None and "purple" in rows[2]["error"]
