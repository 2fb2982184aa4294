"""`cxr serve` under load: REQUESTS POSTs of 1024² PNGs from CLIENTS concurrent clients on
127.0.0.1 (each client sends one request at a time) against one process decoding and scoring the
same bodies one by one. Reports p50 / p99 latency and requests/s; `ratio` = served requests/s over
the loop's, target 1.0: batching (serve.batch) should pay for HTTP and Serve's hops.

    python benchmarks/serve_load.py [--requests 500] [--clients 8] [--replicas 1]
"""

from __future__ import annotations

import argparse
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from _common import report, work_folder  # benchmarks/ is on the path as a script
from predict_images import SIZE, a_trained_checkpoint

from cxrmodel.inference import predict_probs
from data_prep.images import decode_grayscale
from data_prep.synth import LOOKS, DefaultImages
from orchestration.evaluation.serving import Served, start_serving, stop_serving
from orchestration.settings.runtime import init_ray
from orchestration.training.checkpoint import load_trained

TARGET = 1.0
DISTINCT = 16


def bodies() -> list[bytes]:
    rng = np.random.default_rng(0)
    maker = DefaultImages(1024, LOOKS["nih"], rng)
    return [cv2.imencode(".png", (maker.make(rng.random(21) < 0.2) * 255).astype(np.uint8))[1].tobytes()
            for _ in range(DISTINCT)]


def one_process(encoded: list[bytes], requests: int, checkpoint) -> float:
    """Seconds for the loop a lab would write: decode, score, one request at a time."""
    net = load_trained(checkpoint)[0]
    started = time.perf_counter()
    for i in range(requests):
        image = decode_grayscale(encoded[i % DISTINCT], SIZE)
        predict_probs(net, torch.from_numpy(image[None]))
    return time.perf_counter() - started


def post(url: str, body: bytes) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as answer:
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    with work_folder("serve_load") as work:
        checkpoint = a_trained_checkpoint(work)
        encoded = bodies()
        loop_s = one_process(encoded, args.requests, checkpoint)
        init_ray()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        served = Served(str(checkpoint), SIZE, None, None, None)
        url = start_serving(served, host="127.0.0.1", port=port, replicas=args.replicas, gpu=False)
        try:
            for body in encoded[:4]:  # warm: the replica's first batches
                post(url, body)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                latencies = list(pool.map(lambda i: post(url, encoded[i % DISTINCT]), range(args.requests)))
            serve_s = time.perf_counter() - started
        finally:
            stop_serving()
    served_rate, loop_rate = args.requests / serve_s, args.requests / loop_s
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    print(f"served: {served_rate:.1f} req/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms ({args.clients} clients, "
          f"{args.replicas} replica(s)); one process: {loop_rate:.1f} req/s", flush=True)
    report("serve_load", requests=args.requests, clients=args.clients, replicas=args.replicas, image_side=SIZE,
           served_requests_per_s=round(served_rate, 2), loop_requests_per_s=round(loop_rate, 2),
           p50_ms=round(p50, 1), p99_ms=round(p99, 1), ratio=round(served_rate / loop_rate, 3), target=TARGET)


if __name__ == "__main__":
    main()
