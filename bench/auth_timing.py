"""Does refusing a bearer token take longer when the wrong token shares a longer prefix?

    .venv/bin/python bench/auth_timing.py [--rounds 60]

An early-exit comparison leaks the token byte by byte. Timing through HTTP drowns a
nanosecond difference in milliseconds of jitter, so this times the comparison itself on long
tokens (a prefix dependence then grows large): plain ``==`` as the control that shows the
harness can see a leak, ``hmac.compare_digest``, and ``deps._check`` end to end (header parsing,
encoding, comparison). Samples alternate between the two inputs, so drift from other processes
hits both alike; medians ignore its outliers. A ratio near 1 is constant time; the control
should show many-fold. tests/service/test_auth.py pins that every token goes through
``compare_digest``.
"""

from __future__ import annotations

import argparse
import hmac
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from service.api import deps


def median_ratio(compare: Callable[[Any], object], near: Any, far: Any, rounds: int) -> float:
    near_ns: list[int] = []
    far_ns: list[int] = []
    for _ in range(rounds):
        for sample, times in ((near, near_ns), (far, far_ns)):
            start = time.perf_counter_ns()
            compare(sample)
            times.append(time.perf_counter_ns() - start)
    return statistics.median(near_ns) / max(statistics.median(far_ns), 1)


def variants(secret: bytes) -> tuple[bytes, bytes]:
    """As long as ``secret``: one differs in its last byte only, one in its first."""
    return secret[:-1] + bytes([secret[-1] ^ 1]), bytes([secret[0] ^ 1]) + secret[1:]


def refuse(secret: str) -> Callable[[Request], None]:
    def call(request: Request) -> None:
        try:
            deps._check(request, [secret], "the bench")
        except deps.Forbidden:
            return
        raise AssertionError("a wrong token was accepted")

    return call


def bearer(token: bytes) -> Request:
    return Request({"type": "http", "headers": [(b"authorization", b"Bearer " + token)]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    secret = os.urandom(256 * 1024).hex().encode()  # 512 KiB of hex
    near, far = variants(secret)
    rows = [
        ("== (control)", median_ratio(lambda t: t == secret, near, far, args.rounds)),
        (
            "hmac.compare_digest",
            median_ratio(lambda t: hmac.compare_digest(t, secret), near, far, args.rounds),
        ),
        (
            "deps._check",
            median_ratio(refuse(secret.decode()), bearer(near), bearer(far), args.rounds),
        ),
    ]
    print("| comparison | median time, last-byte miss / first-byte miss |")
    print("|---|---:|")
    for name, ratio in rows:
        print(f"| {name} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
