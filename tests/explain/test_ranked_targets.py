"""top_k and several targets per image: one trunk run, then the head once per target.

Every map is checked against pytorch-grad-cam run on the same weights for each of the k best
classes of torch's own logits; the run counts show what a request costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pytorch_grad_cam")

import pytorch_grad_cam as pgc

from service.explain import run_method
from service.explain.targets import TOP_CLASS, distinct_rows, rank_target, resolve_ranks
from tests.fixtures.grad_cam import pgc_maps

from .conftest import open_cpu_session, torch

K = 3


class CountingSessions:
    """open_session that counts onnxruntime runs per graph kind: the derived graph's file name
    prefix (forward, companion, head), "forward" for the model file itself."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def __call__(self, path: Path) -> Any:
        inner = open_cpu_session(path)
        runs = self.runs

        class Counted:
            def run(self, outputs: Any, feeds: Any) -> Any:
                runs.append(path.name.split("-")[0] if "-" in path.name else "forward")
                return inner.run(outputs, feeds)

            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

        return Counted()


def torch_top_k(zoo: Any, image: int, k: int) -> list[int]:
    with torch.no_grad():
        logits = zoo.net(torch.from_numpy(zoo.x[image : image + 1])).numpy()[0]
    return [int(c) for c in np.argsort(-logits, kind="stable")[:k]]


def reference_raw(cls: Any, zoo: Any, image: int, classes: list[int]) -> np.ndarray:
    """pytorch-grad-cam's raw (feature-size) map for each class, from its own runs."""
    rows = np.repeat(zoo.x[image : image + 1], len(classes), axis=0)
    return pgc_maps(cls, zoo.net, zoo.module, rows, classes)[1]


@pytest.mark.parametrize("model", ["resnet18", "densenet121"])
@pytest.mark.parametrize("method", ["gradcam", "xgradcam"])
def test_top_k_matches_pytorch_grad_cam_per_class(
    method: str, model: str, zoo: Any, tmp_path: Path
) -> None:
    z = zoo(model)
    counting = CountingSessions()
    runner = z.runner(tmp_path / "derived", counting)
    classes = torch_top_k(z, 0, K)
    rows = np.repeat(z.x[:1], K, axis=0)
    out = run_method(method, runner, rows, [rank_target(j) for j in range(K)], [z.layer], {})
    assert out.targets.tolist() == classes  # type: ignore[union-attr]
    cls = {"gradcam": pgc.GradCAM, "xgradcam": pgc.XGradCAM}[method]
    ref = reference_raw(cls, z, 0, classes)
    rel = float(np.abs(out.maps[0] - ref).max() / np.abs(ref).max())
    assert rel <= 1e-4, f"{method} top-{K} on {model}: relative error {rel:.2e}"
    # the distinct maps really are per class, not one map three times
    assert np.abs(out.maps[0][0] - out.maps[0][1]).max() > 1e-3 * np.abs(ref).max()
    # one trunk forward for the image, one run of the head's companion for the K seeds
    assert counting.runs == ["forward", "companion"], counting.runs


def test_explicit_target_is_one_run(zoo: Any, tmp_path: Path) -> None:
    z = zoo("resnet18")
    counting = CountingSessions()
    runner = z.runner(tmp_path / "derived", counting)
    target = torch_top_k(z, 1, 5)[4]  # not the top class
    out = run_method("gradcam", runner, z.x[1:2], [target], [z.layer], {})
    assert counting.runs == ["companion"]
    assert out.targets.tolist() == [target]  # type: ignore[union-attr]
    ref = reference_raw(pgc.GradCAM, z, 1, [target])
    assert float(np.abs(out.maps[0] - ref).max() / np.abs(ref).max()) <= 1e-4


def test_two_images_top_k_share_one_trunk_run(zoo: Any, tmp_path: Path) -> None:
    z = zoo("resnet18")
    counting = CountingSessions()
    runner = z.runner(tmp_path / "derived", counting)
    rows = np.repeat(z.x, 2, axis=0)  # image 0 twice, then image 1 twice
    targets = [rank_target(0), rank_target(1)] * 2
    out = run_method("layercam", runner, rows, targets, [z.layer], {})
    expected = torch_top_k(z, 0, 2) + torch_top_k(z, 1, 2)
    assert out.targets.tolist() == expected  # type: ignore[union-attr]
    assert counting.runs == ["forward", "companion"], counting.runs
    for image in (0, 1):
        ref = np.stack(
            [
                reference_raw(pgc.LayerCAM, z, image, [c])[0]
                for c in expected[2 * image : 2 * image + 2]
            ]
        )
        ours = out.maps[0][2 * image : 2 * image + 2]
        assert float(np.abs(ours - ref).max() / np.abs(ref).max()) <= 1e-4


def test_input_gradient_ranks_resolved_by_one_forward(zoo: Any, tmp_path: Path) -> None:
    z = zoo("resnet18")
    counting = CountingSessions()
    runner = z.runner(tmp_path / "derived", counting)
    rows = np.repeat(z.x[:1], 2, axis=0)
    out = run_method("saliency", runner, rows, [rank_target(0), rank_target(1)], [], {})
    classes = torch_top_k(z, 0, 2)
    assert out.targets.tolist() == classes  # type: ignore[union-attr]
    assert counting.runs == ["forward", "companion"], counting.runs
    x = torch.from_numpy(rows.copy()).requires_grad_(True)
    logits = z.net(x)
    logits[torch.arange(2), torch.tensor(classes)].sum().backward()
    ref = x.grad.numpy()
    assert float(np.abs(out.maps[0] - ref).max() / np.abs(ref).max()) <= 1e-4


def test_eigencam_top_k_is_one_forward_and_one_map(zoo: Any, tmp_path: Path) -> None:
    z = zoo("resnet18")
    counting = CountingSessions()
    runner = z.runner(tmp_path / "derived", counting)
    rows = np.repeat(z.x[:1], K, axis=0)
    out = run_method("eigencam", runner, rows, [rank_target(j) for j in range(K)], [z.layer], {})
    assert counting.runs == ["forward"]
    assert out.targets.tolist() == torch_top_k(z, 0, K)  # type: ignore[union-attr]
    assert np.array_equal(out.maps[0][0], out.maps[0][K - 1])


def test_ablationcam_top_k_matches_pytorch_grad_cam(zoo: Any, tmp_path: Path) -> None:
    z = zoo("resnet18")
    runner = z.runner(tmp_path / "derived")
    classes = torch_top_k(z, 0, 2)
    rows = np.repeat(z.x[:1], 2, axis=0)
    out = run_method("ablationcam", runner, rows, [rank_target(0), rank_target(1)], [z.layer], {})
    assert out.targets.tolist() == classes  # type: ignore[union-attr]
    ref = reference_raw(pgc.AblationCAM, z, 0, classes)
    rel = float(np.abs(out.maps[0] - ref).max() / np.abs(ref).max())
    assert rel <= 3e-4, f"ablationcam top-2: relative error {rel:.2e}"


def test_resolve_ranks_and_distinct_rows() -> None:
    scores = np.array([[0.1, 3.0, 2.0, 3.0], [5.0, 1.0, 1.0, 0.0]], dtype=np.float32)
    targets = [TOP_CLASS, rank_target(1), 2, rank_target(1), rank_target(2)]
    got = resolve_ranks(targets, scores[[0, 0, 1, 1, 1]])
    assert got.tolist() == [1, 3, 2, 1, 2]  # ties go to the lower index, classes stay
    x = np.array([[1.0], [1.0], [2.0], [1.0]])
    unique, of_row = distinct_rows(x)
    assert unique.ravel().tolist() == [1.0, 2.0, 1.0] and of_row.tolist() == [0, 0, 1, 2]


def test_ranks_are_refused_by_methods_that_cannot_resolve_them(zoo: Any, tmp_path: Path) -> None:
    z = zoo("resnet18")
    runner = z.runner(tmp_path / "derived")
    with pytest.raises(ValueError, match="class indices, not ranks"):
        run_method("occlusion", runner, z.x[:1], [TOP_CLASS], [], {})
