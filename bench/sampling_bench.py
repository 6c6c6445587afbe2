"""Sampled explanations: what explaining 10% of /predict traffic costs predict's latency.

    .venv/bin/python bench/sampling_bench.py [--model resnet18] [--rounds 6] [--per-round 100]
                                             [--variant sampling_nice=0 ...]

Servers on loopback share one store whose card asks for
``monitoring.sampling = {"fraction": 0.1, "method": "gradcam"}``: one with
CNNVIS_SAMPLING=false ("off"), one with it on (and one more per ``--variant``, e.g.
``sampling_nice=0`` or ``sampling_idle_only=false``). Rounds alternate between
them (off, on, ..., off, on, ...) so that whatever else the machine does lands on all alike;
after each round the server's sampling queue is left to drain, so that one round's backlog does
not run during the next server's round (the samples still queued at the end of the rounds are
counted). Each round posts ``--per-round`` single-image predicts as an open-loop Poisson
stream at ``--load`` of one server's serial capacity (measured first), the way real traffic
leaves gaps for the sampler to use. Prints predict p50/p99 side by side and the sampled
explanations by outcome (ok, dropped on a full queue, stale, error). Traffic only to
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import Server, cat_png, export_torchvision, make_store, percentile, torchvision_card

OUTCOMES = ("ok", "dropped", "stale", "error")


def sampled_counts(url: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {"queue": 0.0}
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cnnvis_explanations_total" and s.labels.get("source") == "sampled":
                counts[s.labels["outcome"]] = counts.get(s.labels["outcome"], 0.0) + s.value
            elif s.name == "cnnvis_sampling_queue_depth":
                counts["queue"] = s.value
            elif (
                s.name.startswith("cnnvis_onnxruntime_run_seconds_")
                and s.labels.get("graph") == "derived"
            ):  # companion runs: the explanations' own
                key = "derived_" + s.name.rsplit("_", 1)[1]
                if key in ("derived_sum", "derived_count"):
                    counts[key] = counts.get(key, 0.0) + s.value
    return counts


def thread_nices(pid: int) -> Counter[int]:
    """Linux: how many of a process's threads run at each nice value."""
    nices: Counter[int] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        nices[int(fields[16])] += 1  # field 19 of stat; 17 after the name and state
    return nices


def drain(url: str, timeout: float = 120.0) -> None:
    """Until the sampler's queue is empty and its counts have stopped moving."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        counts = sampled_counts(url)
        if counts["queue"] == 0 and counts == last:
            return
        last = counts
        time.sleep(0.5)


async def stream(url: str, png: bytes, n: int, rate: float, seed: int) -> list[float]:
    """``n`` predicts with exponential gaps of mean 1/rate; their latencies in ms."""
    import httpx

    draw = random.Random(seed)
    latencies: list[float] = []
    failures = 0
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one() -> None:
            nonlocal failures
            started = time.perf_counter()
            r = await client.post(
                "/v1/models/bench/predict", files={"image": ("cat.png", png, "image/png")}
            )
            if r.status_code == 200:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                failures += 1

        tasks = []
        for _ in range(n):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(draw.expovariate(rate))
        await asyncio.gather(*tasks)
    if failures:
        print(f"  ({failures} requests failed)")
    return latencies


def serial_ms(url: str, png: bytes, n: int = 20) -> float:
    import httpx

    samples = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(n):
            started = time.perf_counter()
            client.post("/v1/models/bench/predict", files={"image": ("c.png", png, "image/png")})
            samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 50)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per server")
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--load", type=float, default=0.4, help="share of serial capacity")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="one more sampling server with this setting, e.g. sampling_nice=0 (repeatable)",
    )
    args = parser.parse_args()

    from schemas.monitoring import MonitoringSpec
    from schemas.sampling import SamplingPolicy

    work = Path(tempfile.mkdtemp(prefix="cnnvis-sampling-"))
    card = torchvision_card(args.model).model_copy(  # type: ignore[attr-defined]
        update={
            "name": "bench",
            "monitoring": MonitoringSpec(
                sampling=SamplingPolicy(fraction=args.fraction, method=args.method)
            ),
        }
    )
    store = make_store(work / "store", {"bench": (export_torchvision(args.model), card)})
    png = cat_png(224)
    common = {"max_batch_size": 8, "max_queue": 256}
    on = f"{args.fraction:.0%}"
    variants = {"off": {"sampling": "false"}, on: {"sampling": "true"}}
    for extra in args.variant:  # e.g. sampling_nice=0: more servers, to compare the settings
        key, _, value = extra.partition("=")
        variants[f"{on}, {extra}"] = {"sampling": "true", key: value}
    names = list(variants)
    servers = {name: Server(store, **variants[name], **common) for name in names}
    try:
        for server in servers.values():  # sessions, and the companion graph of the samples
            asyncio.run(stream(server.url, png, 20, 5.0, seed=1))
            drain(server.url)
        latency = serial_ms(servers["off"].url, png)
        rate = args.load * 1000 / latency
        load = os.getloadavg()[0]
        print(
            f"{args.model}, 224x224 PNG, one image per predict; serial predict {latency:.0f} ms,"
            f" Poisson arrivals at {rate:.1f}/s ({args.load:.0%} of serial capacity);"
            f" sampling {args.fraction:.0%} with {args.method}; {args.rounds} alternating rounds"
            f" of {args.per_round} requests per server; load average {load:.2f}"
            f" on {os.cpu_count()} cores\n"
        )
        latencies: dict[str, list[float]] = {name: [] for name in servers}
        round_p99: dict[str, list[float]] = {name: [] for name in servers}
        # sampled outcomes during the rounds, and of the backlog explained after them
        during = {name: Counter[str]() for name in servers}
        after = {name: Counter[str]() for name in servers}
        for r in range(args.rounds):
            for name, server in servers.items():
                start = sampled_counts(server.url)
                lat = asyncio.run(stream(server.url, png, args.per_round, rate, seed=100 + r))
                end = sampled_counts(server.url)
                latencies[name].extend(lat)
                round_p99[name].append(percentile(lat, 99))
                drain(server.url)
                drained = sampled_counts(server.url)
                for key in OUTCOMES:
                    during[name][key] += end.get(key, 0) - start.get(key, 0)
                    after[name][key] += drained.get(key, 0) - end.get(key, 0)
        print(
            "| sampling | requests | predict p50 (ms) | predict p99 (ms) | p99 per round (ms)"
            " | sampled ok | dropped | stale | error | explained after the rounds |"
        )
        print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
        for name in servers:
            per_round = ", ".join(f"{p:.0f}" for p in round_p99[name])
            d = during[name]
            print(
                f"| {name} | {len(latencies[name])} | {percentile(latencies[name], 50):.1f} |"
                f" {percentile(latencies[name], 99):.1f} | {per_round} |"
                f" {d['ok']:.0f} | {d['dropped']:.0f} | {d['stale']:.0f} | {d['error']:.0f} |"
                f" {after[name]['ok']:.0f} ok, {after[name]['stale']:.0f} stale |"
            )
        off = latencies["off"]
        p99_off, median_off = percentile(off, 99), statistics.median(round_p99["off"])
        print()
        for name in names[1:]:
            lat = latencies[name]
            median = statistics.median(round_p99[name])
            print(
                f"{name} / off: pooled p99 {percentile(lat, 99) / p99_off:.3f}, median of the"
                f" per-round p99s {median / median_off:.3f} ({median:.1f} / {median_off:.1f} ms),"
                f" p50 {percentile(lat, 50) / percentile(off, 50):.3f}"
            )
        runs = sampled_counts(servers[on].url)
        if runs.get("derived_count"):
            print(
                f"companion runs of the {on} server (the sampled explanations' model work):"
                f" {runs['derived_count']:.0f}, mean"
                f" {runs['derived_sum'] / runs['derived_count'] * 1000:.1f} ms"
            )
        niced = thread_nices(servers[on].process.pid)
        print(f"threads of the {on} server by nice value: {dict(sorted(niced.items()))}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
