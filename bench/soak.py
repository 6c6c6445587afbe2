"""Soak: mixed traffic against one server for a bounded time, memory watched throughout.

    .venv/bin/python bench/soak.py [--seconds 300] [--concurrency 8] [--fuzz 0]

Traffic on loopback against the pretrained EfficientNet-Lite0: predict, gradcam, scorecam
(64 channels), activations, and bad requests (corrupt images, unknown models, invalid
options). Reports requests served, counts by status, p50/p99 per kind, and the server's RSS
at start, peak and end. With --fuzz N, also runs the schemathesis suite with N examples per
operation first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from _common import ROOT, Server, cat_png, make_store, percentile

KINDS = ["predict", "gradcam", "scorecam", "activations", "bad_image", "bad_model", "bad_option"]
WEIGHTS = [30, 30, 5, 10, 10, 5, 10]


def request_for(kind: str, png: str) -> tuple[str, dict]:
    base = "/v1/models/efficientnet-lite0"
    if kind == "predict":
        return f"{base}/predict", {"images": [png]}
    if kind == "gradcam":
        return f"{base}/explain", {"images": [png], "method": "gradcam"}
    if kind == "scorecam":
        return f"{base}/explain", {
            "images": [png],
            "method": "scorecam",
            "options": {"max_channels": 64},
        }
    if kind == "activations":
        return f"{base}/activations", {"images": [png], "channels": {"top_k": 8}}
    if kind == "bad_image":
        return f"{base}/predict", {"images": [base64.b64encode(b"\x89PNG broken").decode()]}
    if kind == "bad_model":
        return "/v1/models/no-such-model/predict", {"images": [png]}
    return f"{base}/explain", {"images": [png], "options": {"nonsense": 1}}


async def soak(url: str, seconds: float, concurrency: int) -> tuple[Counter, dict]:
    import httpx

    png = base64.b64encode(cat_png()).decode()
    statuses: Counter = Counter()
    latencies: dict[str, list[float]] = defaultdict(list)
    deadline = time.monotonic() + seconds
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                kind = rng.choices(KINDS, WEIGHTS)[0]
                path, body = request_for(kind, png)
                started = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    statuses[(kind, r.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[(kind, type(exc).__name__)] += 1
                latencies[kind].append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fuzz", type=int, default=0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=30,
        help="seconds of the same traffic before memory is first read",
    )
    args = parser.parse_args()

    if args.fuzz:
        env = {**os.environ, "CNNVIS_FUZZ_EXAMPLES": str(args.fuzz)}
        started = time.perf_counter()
        fuzz = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/reliability/test_fuzz.py",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        print(
            f"schemathesis, {args.fuzz} examples per operation:"
            f" {fuzz.stdout.strip().splitlines()[-1]} ({time.perf_counter() - started:.0f} s)"
        )

    from service.zoo import efficientnet_lite0

    work = Path(tempfile.mkdtemp(prefix="cnnvis-soak-"))
    store = make_store(work / "store", {"efficientnet-lite0": efficientnet_lite0()})
    server = Server(store)
    try:
        cold_rss = server.rss_mib()
        # warm-up with the same mix and concurrency: sessions, companion graphs and
        # onnxruntime's memory arenas reach their working size before memory is measured
        asyncio.run(soak(server.url, args.warmup, args.concurrency))
        time.sleep(1)
        start_rss = server.rss_mib()
        with server.watch_peak() as peak:
            statuses, latencies = asyncio.run(soak(server.url, args.seconds, args.concurrency))
        time.sleep(2)
        end_rss = server.rss_mib()
        alive = server.process.poll() is None
    finally:
        server.stop()

    total = sum(statuses.values())
    print(
        f"soak: {args.seconds:.0f} s at concurrency {args.concurrency}: {total} requests,"
        f" server alive after: {alive}\n"
    )
    print("| kind | requests | statuses | p50 (ms) | p99 (ms) |")
    print("|---|---:|---|---:|---:|")
    for kind in KINDS:
        counts = {s: n for (k, s), n in statuses.items() if k == kind}
        lat = latencies.get(kind, [])
        print(
            f"| {kind} | {sum(counts.values())} | {json.dumps(counts)} |"
            f" {percentile(lat, 50):.0f} | {percentile(lat, 99):.0f} |"
        )
    five = sum(n for (_, s), n in statuses.items() if isinstance(s, int) and s >= 500)
    print(f"\n5xx: {five}")
    print(
        f"server RSS: {cold_rss:.0f} MiB cold; after {args.warmup:.0f} s of warm-up:"
        f" start {start_rss:.0f} MiB, peak {peak.peak:.0f} MiB, end {end_rss:.0f} MiB"
        f" ({(end_rss / start_rss - 1) * 100:+.1f}% end vs start)"
    )


if __name__ == "__main__":
    main()
