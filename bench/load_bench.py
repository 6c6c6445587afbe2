"""Load test on loopback: batching on vs off, then overload against a small queue.

    .venv/bin/python bench/load_bench.py [--requests 96] [--overload 200]

1. gradcam on resnet50 (seeded random weights, 224x224 PNG posted as multipart), 16
   concurrent clients, the same number of requests against a server with batching off
   (CNNVIS_MAX_BATCH_SIZE=1) and on (16): throughput, p50, p99, statuses.
2. 200 concurrent clients against CNNVIS_MAX_QUEUE=32: only 200s and 503s are acceptable;
   the server's RSS at start, peak and after the storm.
Bounded in requests and time; traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import Server, cat_png, export_torchvision, make_store, percentile, torchvision_card


async def storm(url: str, png: bytes, requests: int, concurrency: int, timeout: float = 300):
    import httpx

    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                try:
                    r = await client.post(
                        "/v1/models/resnet50/explain",
                        params={"method": "gradcam"},
                        files={"image": ("cat.png", png, "image/png")},
                    )
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        latencies.append((time.perf_counter() - started) * 1000)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1  # type: ignore[index]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return statuses, latencies, elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--overload", type=int, default=200)
    parser.add_argument(
        "--batch-sizes",
        default="1,4,8,16",
        help="CNNVIS_MAX_BATCH_SIZE values to compare; 1 = batching off",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cnnvis-load-"))
    store = make_store(
        work / "store", {"resnet50": (export_torchvision("resnet50"), torchvision_card("resnet50"))}
    )
    png = cat_png(224)

    print(f"gradcam, resnet50, {args.requests} requests at concurrency {args.concurrency}\n")
    print("| batching | throughput (req/s) | p50 (ms) | p99 (ms) | statuses |")
    print("|---|---:|---:|---:|---|")
    throughput = {}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    for batch in sizes:
        label = "off (max_batch_size=1)" if batch == 1 else f"on (max_batch_size={batch})"
        server = Server(store, max_batch_size=batch, max_queue=64)
        try:
            asyncio.run(storm(server.url, png, 8, 4))  # warm up: sessions, companion graph
            statuses, lat, elapsed = asyncio.run(
                storm(server.url, png, args.requests, args.concurrency)
            )
        finally:
            server.stop()
        throughput[batch] = statuses[200] / elapsed
        print(
            f"| {label} | {throughput[batch]:.2f} | {percentile(lat, 50):.0f} |"
            f" {percentile(lat, 99):.0f} | {dict(statuses)} |"
        )
    for batch in sizes[1:]:
        print(
            f"batching speed-up at max_batch_size={batch}:"
            f" {throughput[batch] / throughput[sizes[0]]:.2f}x"
        )

    server = Server(store, max_batch_size=max(sizes), max_queue=32)
    try:
        asyncio.run(storm(server.url, png, 8, 4))
        time.sleep(1)
        start_rss = server.rss_mib()
        with server.watch_peak() as peak:
            statuses, lat, elapsed = asyncio.run(
                storm(server.url, png, args.overload * 2, args.overload)
            )
        time.sleep(2)
        end_rss = server.rss_mib()
    finally:
        server.stop()
    print(
        f"\noverload: {args.overload * 2} requests at concurrency {args.overload},"
        f" CNNVIS_MAX_QUEUE=32, {elapsed:.1f} s"
    )
    print(f"statuses: {dict(statuses)}; p99 of 200s: {percentile(lat, 99):.0f} ms")
    print(
        f"server RSS: start {start_rss:.0f} MiB, peak {peak.peak:.0f} MiB, end {end_rss:.0f} MiB"
        f" ({(end_rss / start_rss - 1) * 100:+.1f}%)"
    )
    bad = {k: v for k, v in statuses.items() if k not in (200, 503)}
    print("only 200 and 503:", "yes" if not bad else f"NO: {bad}")


if __name__ == "__main__":
    main()
