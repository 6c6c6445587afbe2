"""The explorer at /ui driven in headless Chromium (Debian's, via Playwright's driver):
what the page shows is compared with what the API returns for the same request."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import serving

CHROMIUM = "/usr/bin/chromium"  # `make test` installs it (Makefile: chromium stamp)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def server(effnet_store: Path) -> Iterator[str]:
    with serving(effnet_store) as host:
        yield f"http://{host}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots go under the test output (or CNNVIS_UI_SCREENSHOTS, e.g. docs/explorer)."""
    folder = os.environ.get("CNNVIS_UI_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("ui-screenshots")


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/ui/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()


@pytest.fixture(scope="module")
def chelsea_file(chelsea_png: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ui") / "chelsea.png"
    path.write_bytes(chelsea_png)
    return path


def pixels(png_b64_or_bytes: str | bytes) -> np.ndarray:
    data = (
        base64.b64decode(png_b64_or_bytes)
        if isinstance(png_b64_or_bytes, str)
        else png_b64_or_bytes
    )
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def upload(page: Any, path: Path) -> Any:
    """Choose ``path`` in the file input; returns the page's explain response."""
    with page.expect_response(lambda r: "/explain" in r.url, timeout=TIMEOUT_MS) as answer:
        page.set_input_files("#file", str(path))
    return answer.value


def test_overlay_is_what_the_api_returns(
    page: Any, server: str, chelsea_file: Path, shots: Path
) -> None:
    page.select_option(".panel .method", "gradcam")
    response = upload(page, chelsea_file)
    page.wait_for_selector(".panel[data-state=done] img.overlay[src^='data:']")
    assert "method=gradcam" in response.url
    shown = page.get_attribute(".panel img.overlay", "src")
    # what the browser decoded and drew, read back through a canvas
    drawn = page.evaluate(
        """() => { const img = document.querySelector('.panel img.overlay');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        return [c.width, c.height, Array.from(ctx.getImageData(0, 0, c.width, c.height).data)]; }"""
    )
    # the same request, made by the test: the same file part, the page's query string
    api = httpx.post(
        response.url,
        files={"image": ("chelsea.png", chelsea_file.read_bytes(), "image/png")},
        timeout=60,
    )
    assert api.status_code == 200, api.text
    expected = pixels(api.json()["results"][0]["overlay"])
    assert np.array_equal(pixels(shown.split(",", 1)[1]), expected)
    width, height, rgba = drawn
    assert np.array_equal(np.asarray(rgba, np.uint8).reshape(height, width, 4), expected)
    labels = page.locator("#predictions li").all_inner_texts()
    top = httpx.post(
        f"{server}/v1/models/efficientnet-lite0/predict",
        files={"image": ("chelsea.png", chelsea_file.read_bytes(), "image/png")},
    ).json()["predictions"][0]
    assert [t.split(" — ")[0] for t in labels] == [p["label"] for p in top]
    page.screenshot(path=str(shots / "explain.png"), full_page=True)


def test_architecture_nodes_and_layer_tiles(
    page: Any, server: str, chelsea_file: Path, shots: Path
) -> None:
    upload(page, chelsea_file)
    graph = httpx.get(f"{server}/v1/models/efficientnet-lite0/graph").json()
    page.click("#tab-graph")
    page.wait_for_selector("#graph .group-node")  # a 100-layer net starts with its blocks
    drawn = page.locator("#graph .node").count()
    grouped = sum(
        int(c)
        for c in page.locator("#graph .group-node").evaluate_all(
            "els => els.map(e => e.dataset.count)"
        )
    )
    assert drawn + grouped == len(graph["nodes"])
    page.screenshot(path=str(shots / "architecture.png"))
    page.click("#expand-all")
    assert page.locator("#graph .node").count() == len(graph["nodes"])
    assert page.locator("#graph .group-node").count() == 0
    default = httpx.get(f"{server}/v1/models/efficientnet-lite0/layers").json()["default"]
    node = next(n for n in graph["nodes"] if n["layer"] == default)
    page.locator(f"#graph .node[data-id='{node['id']}']").dispatch_event("click")
    page.wait_for_selector("#layer-panel .tiles img[src^='data:']")
    page.wait_for_selector("#layer-panel .cam img[src^='data:']")
    page.screenshot(path=str(shots / "architecture-layer.png"))


def test_activations_sorted_by_mean(page: Any, chelsea_file: Path, shots: Path) -> None:
    upload(page, chelsea_file)
    page.click("#tab-activations")
    page.wait_for_selector("#act-tiles[src^='data:']")
    page.wait_for_selector("#filters[src^='blob:']")
    means = [
        float(t) for t in page.locator("#act-table tbody tr td:nth-child(2)").all_inner_texts()
    ]
    assert len(means) == 16 and means == sorted(means, reverse=True)
    page.screenshot(path=str(shots / "activations.png"), full_page=True)


def test_non_image_upload_shows_the_problem(
    page: Any, server: str, tmp_path: Path, shots: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(b"this is not an image")
    with page.expect_response(lambda r: "/predict" in r.url) as answer:
        page.set_input_files("#file", str(text))
    assert answer.value.status == 422
    detail = httpx.post(
        f"{server}/v1/models/efficientnet-lite0/predict",
        files={"image": ("notes.txt", text.read_bytes(), "text/plain")},
    ).json()["detail"]
    page.wait_for_selector("#image-status.error")
    assert detail in page.inner_text("#image-status")
    page.screenshot(path=str(shots / "error.png"))


def test_jobs_view_runs_a_channel_visualisation(
    page: Any, server: str, chelsea_file: Path, shots: Path
) -> None:
    upload(page, chelsea_file)
    page.click("#tab-jobs")
    page.fill("#job-steps", "4")
    page.fill("#job-channel", "3")
    with page.expect_response(lambda r: "/featurevis" in r.url) as answer:
        page.click("#job-form button[type=submit]")
    job = answer.value.json()
    page.wait_for_selector("#job-result[src^='data:']")
    page.wait_for_selector("#job-compare[src^='data:']")
    done = httpx.get(f"{server}/v1/jobs/{job['id']}").json()
    assert done["state"] == "done" and len(done["result"]["curve"]) == 4
    shown = page.get_attribute("#job-result", "src").split(",", 1)[1]
    assert np.array_equal(pixels(shown), pixels(done["result"]["images"][0]))
    assert page.locator("#job-curve polyline").count() == 1
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)
