"""A client of a real ``evitsam serve`` process, run as its own program by test_service_limits.py: starts the
server on a free loopback port, uploads, predicts, sends an oversized declared body, stops it with Ctrl-C (SIGINT),
and exits 0 when every check held (an AssertionError's message otherwise). Kept out of the test process, whose
many earlier tests' threads and libraries are not what a client has."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(photo: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "evitsam", "serve", "--port", str(port), "--max-upload-mb", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.3)
        image_id = httpx.post(f"{base}/v1/images", files={"file": ("p.png", photo.read_bytes())}).json()["image_id"]
        answer = httpx.post(f"{base}/v1/predict", json={"image_id": image_id, "points": [[160, 120, 1]]})
        assert answer.status_code == 200 and answer.json()["masks"][0]["area"] > 0, answer.text
        # a declared body over the limit is refused from its headers, before the body is sent
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(
                b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 900000000\r\n\r\n"
            )
            head = raw.recv(4096).decode()
        assert head.startswith("HTTP/1.1 413"), head
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert f"http://localhost:{port}" in stderr and "nano" in stderr and "stopped" in stderr, stderr
    print("ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
