"""Load on ``evitsam serve`` over loopback: clicks on cached images and new-image uploads at 1, 4 and 16
concurrent clients, the HTTP overhead of a click over an in-process ``SamPredictor.predict``, and the server's
memory after many distinct images with a small cache.

    python benchmarks/serve_load.py --image photo.jpg [--seconds 8] [--distinct 500] [--cache-mb 32]

Reports requests/s, p50/p99 latency and errors per phase (every request is counted as sent and as answered, so
a lost request shows), the click overhead at p50, the 4-client/1-client click throughput ratio, and the server's
RSS after 1/2 and all of ``--distinct`` images. Loopback only; each phase is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def variants(image: np.ndarray, count: int, side: int = 480) -> list[bytes]:
    """``count`` distinct JPEGs: crops of the photo at shifting offsets, resized to ``side`` on the long side."""
    height, width = image.shape[:2]
    out = []
    for i in range(count):
        x0, y0 = (i * 37) % max(1, width // 4), (i * 23) % max(1, height // 4)
        crop = Image.fromarray(image[y0 : y0 + 3 * height // 4, x0 : x0 + 3 * width // 4])
        crop.thumbnail((side, side))
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=85 + i % 10)
        out.append(buffer.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def run_clients(count: int, seconds: float, request) -> dict:
    """``count`` threads each sending ``request(client, i)`` back to back for ``seconds``."""
    latencies, errors, sent, answered = [], [], [0], [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(index: int) -> None:
        with httpx.Client(timeout=120) as client:
            i = 0
            while time.perf_counter() < stop:
                with lock:
                    sent[0] += 1
                start = time.perf_counter()
                try:
                    response = request(client, index * 100_000 + i)
                    ok = response.status_code == 200
                    detail = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as error:
                    ok, detail = False, repr(error)
                elapsed = time.perf_counter() - start
                with lock:
                    answered[0] += 1
                    latencies.append(elapsed) if ok else errors.append(detail)
                i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(count)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    return {
        "clients": count,
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "errors": len(errors),
        "lost": sent[0] - answered[0],
        "first_error": errors[0] if errors else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load phase")
    parser.add_argument("--distinct", type=int, default=500, help="distinct images for the memory phase")
    parser.add_argument(
        "--cache-mb", type=float, default=64.0, help="room for the 4 clicked images (~8 MB each), far below --distinct"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    from evitsam import SamPredictor, load_model
    from evitsam.io import read_image

    photo = read_image(args.image)
    height, width = photo.shape[:2]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "evitsam", "serve", "--port", str(port), "--cache-mb", str(args.cache_mb),
               "--workers", str(args.workers)]  # fmt: skip
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    report: dict = {"image": f"{args.image.name} {width}x{height}", "cpus": os.cpu_count(), "workers": args.workers}
    try:
        deadline = time.perf_counter() + 180
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"server did not start: {server.stderr.read()}")
            time.sleep(0.3)
        report["model"] = httpx.get(f"{base}/v1/model").json()
        cached = [args.image.read_bytes(), *variants(photo, 3)]
        ids = [httpx.post(f"{base}/v1/images", files={"file": ("p.jpg", d)}, timeout=120).json() for d in cached]
        rng = np.random.default_rng(0)

        def click(client: httpx.Client, i: int):
            target = ids[i % len(ids)]
            x, y = rng.uniform(0, target["width"]), rng.uniform(0, target["height"])
            return client.post(f"{base}/v1/predict", json={"image_id": target["image_id"], "points": [[x, y, 1]]})

        # the same click in process, on the same model with the server's threads per request, alternating with
        # the click over HTTP so both see the same machine load: the difference is what the HTTP layer adds
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))
        predictor = SamPredictor(load_model())
        predictor.set_image(photo)
        point = (np.array([[width / 3, height / 2]]), np.array([1]))
        body = {"image_id": ids[0]["image_id"], "points": [[width / 3, height / 2, 1]]}
        times, http_times = [], []
        with httpx.Client() as client:
            for i in range(65):
                start = time.perf_counter()
                predictor.predict(*point, multimask_output=False)
                middle = time.perf_counter()
                client.post(f"{base}/v1/predict", json=body)
                if i >= 5:  # warm-up
                    times.append(middle - start)
                    http_times.append(time.perf_counter() - middle)
        report["click_in_process_p50_ms"] = round(statistics.median(times) * 1000, 2)
        report["click_http_p50_ms"] = round(statistics.median(http_times) * 1000, 2)
        report["click_http_overhead_p50_ms"] = round(report["click_http_p50_ms"] - report["click_in_process_p50_ms"], 2)

        report["clicks"] = [run_clients(n, args.seconds, click) for n in args.clients]
        by_clients = {row["clients"]: row["req_per_s"] for row in report["clicks"]}
        if 1 in by_clients and 4 in by_clients:
            report["click_throughput_4_over_1"] = round(by_clients[4] / by_clients[1], 2)

        fresh = variants(photo, 1000, side=400)
        counter = iter(range(len(fresh)))
        counter_lock = threading.Lock()

        def new_image(client: httpx.Client, i: int):
            with counter_lock:
                index = next(counter)
            return client.post(f"{base}/v1/images", files={"file": ("n.jpg", fresh[index])})

        report["uploads"] = [run_clients(n, args.seconds, new_image) for n in args.clients]

        # memory: many distinct images through a small cache
        rss = {"start": round(rss_mb(server.pid), 1)}
        memory_images = variants(photo[::-1], args.distinct, side=640)  # flipped: none of them seen before
        with httpx.Client(timeout=120) as client:
            for i, data in enumerate(memory_images, 1):
                response = client.post(f"{base}/v1/images", files={"file": ("m.jpg", data)})
                if response.status_code != 200:
                    raise RuntimeError(f"upload {i} failed: {response.text}")
                if i in (args.distinct // 2, args.distinct):
                    rss[f"after_{i}"] = round(rss_mb(server.pid), 1)
        metrics = httpx.get(f"{base}/metrics").text
        cache_bytes = next(
            float(line.split()[1]) for line in metrics.splitlines() if line.startswith("evitsam_cache_bytes")
        )
        report["memory"] = {"cache_mb_limit": args.cache_mb, "cache_mb_used": round(cache_bytes / 2**20, 1),
                            "rss_mb": rss}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(report, indent=2))
    failures = sum(row["errors"] + row["lost"] for row in report["clicks"] + report["uploads"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
