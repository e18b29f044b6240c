"""The served student pyfunc under load, against in-process ONNX Runtime on the same images.

Builds an HDKD student (random weights of `--preset`, or `--checkpoint`), compiles it to ONNX (or takes
`--compiled`), logs it as the student pyfunc into a throwaway local MLflow store (sqlite), starts
`mlflow models serve --env-manager local` on 127.0.0.1 (a free port), and sends a fixed number of batch-1
requests (base64 JPEGs, `dataframe_split`) from `--concurrency` client threads (keep-alive connections,
a timeout per request, a deadline per level). The same images go through the in-process `Predictor` on
the same compiled folder (decode, eval transform, ONNX Runtime: what the pyfunc does inside the server),
with the same numbers of threads, levels interleaved over `--rounds`. Prints the CPU, one table
(requests/s, p50/p99 ms, errors) and the served overhead over in-process at batch 1. Stops the server
itself (also on Ctrl-C or an error). Traffic goes to 127.0.0.1 only.

    python benchmarks/serve_load.py                          # tiny preset, 32 px
    python benchmarks/serve_load.py --preset paper --requests 120
    python benchmarks/serve_load.py --checkpoint models/distilled/best.pt --compiled models/compiled
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hdkd.servers import stop_group, wait_for

VENV_BIN = Path(sys.executable).parent
MODEL_NAME = "hdkd-student-bench"
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def cpu_description() -> str:
    """CPU model, vector flags and the cores this process may use."""
    from hdkd.evaluation.timing import cpu_name

    return f"{cpu_name()}, {len(os.sched_getaffinity(0))} usable"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_student(preset: str, folder: Path) -> tuple[Path, int]:
    """A random-weight distilled student of `preset` (latency does not depend on the weights) and its size."""
    import torch

    from hdkd.models import PRESETS, build_model
    from hdkd.training.checkpoint import save_checkpoint

    size = PRESETS[preset].img_size
    torch.manual_seed(0)
    model = build_model("distilled", preset, len(CLASSES), img_size=size)
    meta = {"kind": "distilled", "preset": preset, "block": "mbcsa", "img_size": size, "classes": CLASSES}
    save_checkpoint(folder / "best.pt", {"model": model.state_dict(), "meta": meta})
    return folder / "best.pt", size


def compile_onnx(checkpoint: Path, folder: Path) -> Path:
    """ONNX only, parity-checked on a few random images, as the compile stage does it."""
    from hdkd.config import CompileParams
    from hdkd.data.arrays import save_split
    from hdkd.deploy.compile import compile_student
    from hdkd.training.checkpoint import load_trained

    _, meta = load_trained(checkpoint)
    size, classes = int(meta["img_size"]), list(meta["classes"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    labels = np.arange(8) % len(classes)
    save_split(folder / "val.npz", images, labels, classes, np.array([f"{i}.png" for i in range(8)]))
    params = CompileParams(targets=["onnx"], max_batch=64, latency_repeats=3)
    compile_student(params, checkpoint, folder / "val.npz", folder / "compiled", log=lambda _: None)
    return folder / "compiled"


def log_model(checkpoint: Path, compiled: Path, folder: Path) -> str:
    """The student pyfunc in a local sqlite store under `folder`; returns the tracking URI."""
    import mlflow

    from hdkd.deploy.pyfunc import log_student_pyfunc

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.chdir(folder)  # artifacts land in ./mlruns of the directory the experiment is created in
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve-load")
    with mlflow.start_run():
        log_student_pyfunc(checkpoint, compiled, registered_model_name=MODEL_NAME)
    return uri


def test_images(count: int, width: int, height: int) -> list[bytes]:
    """JPEGs of the size of a HAM10000 image (600x450 by default): smooth colour blobs plus a little noise."""
    from PIL import Image

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    encoded = []
    for _ in range(count):
        cy, cx, r = rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None]
        image = 200 - blob * rng.uniform(60, 150, 3) + rng.normal(0, 6, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


@dataclass
class Level:
    """Latencies and errors of one client configuration, summed over rounds."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def row(self) -> tuple[int, int, float, float, float, float]:
        done = len(self.latencies)
        if not done:
            return len(self.errors), len(self.errors), 0.0, float("nan"), float("nan"), float("nan")
        ms = np.array(self.latencies) * 1000
        return (
            done + len(self.errors),
            len(self.errors),
            done / self.seconds,
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 99)),
            self.cpu_seconds / done * 1000,
        )


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of one process group (the server and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def run_level(
    call: Callable[[int, threading.local], None],
    requests: int,
    concurrency: int,
    deadline_s: float,
    level: Level,
    cpu: Callable[[], float] = time.process_time,
) -> None:
    """`requests` calls from `concurrency` threads; stops issuing new calls after `deadline_s` seconds."""
    lock, counter = threading.Lock(), iter(range(requests))
    local = threading.local()
    began, cpu_began = time.perf_counter(), cpu()
    stop_at = time.monotonic() + deadline_s

    def worker() -> None:
        while time.monotonic() < stop_at:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            start = time.perf_counter()
            try:
                call(index, local)
            except Exception as error:  # counted, reported; the benchmark goes on
                level.errors.append(f"{type(error).__name__}: {str(error)[:200]}")
                local.__dict__.clear()  # a fresh connection after an error
            else:
                level.latencies.append(time.perf_counter() - start)

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    level.seconds += time.perf_counter() - began
    level.cpu_seconds += cpu() - cpu_began


def start_server(model_uri: str, tracking_uri: str, port: int, workers: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # the server execs `uvicorn` from PATH
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    with open(log, "wb") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> None:
    from hdkd.models import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="random weights of this preset")
    parser.add_argument("--checkpoint", type=Path, help="a trained best.pt instead of random weights")
    parser.add_argument("--compiled", type=Path, help="its compiled folder (default: compile ONNX here)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level and mode, over all rounds")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (other load hits all alike)")
    parser.add_argument("--images", type=int, default=16, help="distinct test images")
    parser.add_argument("--image-px", default="600x450", help="test JPEG width x height")
    parser.add_argument("--workers", type=int, default=1, help="server workers (mlflow models serve -w)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per level and round at most")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if not 1 <= args.requests <= 5000 or max(levels) > 32 or args.rounds < 1:
        parser.error("keep it bounded: 1..5000 requests, concurrency <= 32, rounds >= 1")

    from hdkd.deploy.predict import ModelFiles, Predictor, decode_image

    print(f"CPU: {cpu_description()}", flush=True)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        if args.checkpoint:
            checkpoint = args.checkpoint.resolve()
            label = str(args.checkpoint)
        else:
            checkpoint, _ = build_student(args.preset, folder)
            label = f"distilled {args.preset} (random weights)"
        compiled = args.compiled.resolve() if args.compiled else compile_onnx(checkpoint, folder)
        tracking_uri = log_model(checkpoint, compiled, folder)
        predictor = Predictor.from_files(ModelFiles("bench", checkpoint, compiled), backend="onnx")
        print(
            f"model: {label}, {predictor.image_size} px, backend {predictor.backend}; "
            f"built and logged in {time.perf_counter() - began:.0f} s",
            flush=True,
        )
        width, height = (int(v) for v in args.image_px.lower().split("x"))
        images = test_images(args.images, width, height)
        bodies = [
            json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(i).decode()]]}}).encode()
            for i in images
        ]
        print(
            f"requests: batch 1, {width}x{height} JPEG ({np.mean([len(i) for i in images]) / 1024:.0f} KiB, "
            f"{np.mean([len(b) for b in bodies]) / 1024:.0f} KiB as JSON)",
            flush=True,
        )

        port = free_port()
        log = folder / "serve.log"
        server = start_server(f"models:/{MODEL_NAME}/1", tracking_uri, port, args.workers, log)
        try:
            began = time.perf_counter()
            try:
                wait_for(f"http://127.0.0.1:{port}/ping", 120, server)
            except (TimeoutError, RuntimeError) as error:
                raise SystemExit(f"{error}\n{log.read_text()[-3000:]}") from None
            print(f"server: {args.workers} worker(s), answered /ping after {time.perf_counter() - began:.0f} s")

            def served(index: int, local: threading.local) -> None:
                if not hasattr(local, "connection"):
                    local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=args.timeout)
                local.connection.request(
                    "POST",
                    "/invocations",
                    body=bodies[index % len(bodies)],
                    headers={"Content-Type": "application/json"},
                )
                response = local.connection.getresponse()
                payload = response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
                if len(json.loads(payload)["predictions"]) != 1:
                    raise RuntimeError("not one prediction")

            def in_process(index: int, local: threading.local) -> None:
                image = decode_image(images[index % len(images)], "image")
                rows = predictor.describe(predictor.predict_images([image]))
                if len(rows) != 1:
                    raise RuntimeError("not one prediction")

            modes = {"in-process": in_process, "served": served}
            # CPU time per request: the benchmark process for in-process (nothing else runs in it then), the
            # server's processes for served (not the clients). Unlike latency, it hardly moves with other load.
            meters = {"in-process": time.process_time, "served": lambda: group_cpu_seconds(server.pid)}
            results = {(mode, c): Level() for c in levels for mode in modes}
            for call in modes.values():  # warm-up: sessions, connections, the server's thread pool
                run_level(call, 2 * max(levels), max(levels), args.deadline, Level())
            per_round = max(1, args.requests // args.rounds)
            for _ in range(args.rounds):
                for concurrency in levels:
                    for mode, call in modes.items():
                        level = results[(mode, concurrency)]
                        run_level(call, per_round, concurrency, args.deadline, level, meters[mode])
        finally:
            stop_group(server)
        refused = [line for line in log.read_text().splitlines() if "refused" in line]

    print(
        f"\nload average (1 min) before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    header = (
        f"{'mode':<11} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU ms/req':>10}"
    )
    print(header)
    print("-" * len(header))
    table = {}
    for concurrency in levels:
        for mode in modes:
            total, errors, rate, p50, p99, cpu_ms = results[(mode, concurrency)].row()
            table[f"{mode}@{concurrency}"] = {
                "requests": total,
                "errors": errors,
                "rps": rate,
                "p50": p50,
                "p99": p99,
                "cpu_ms": cpu_ms,
            }
            print(
                f"{mode:<11} {concurrency:>7} {total:>8} {errors:>6} {rate:>8.1f} {p50:>8.2f} {p99:>8.2f} "
                f"{cpu_ms:>10.2f}"
            )
    print()
    for concurrency in levels:
        local_row, served_row = table[f"in-process@{concurrency}"], table[f"served@{concurrency}"]
        latency = served_row["p50"] / local_row["p50"] - 1
        throughput = local_row["rps"] / served_row["rps"] - 1 if served_row["rps"] else float("inf")
        cpu = served_row["cpu_ms"] / local_row["cpu_ms"] - 1
        print(
            f"overhead of serving at {concurrency} client(s), batch 1: p50 {latency:+.0%} "
            f"({served_row['p50'] - local_row['p50']:+.2f} ms), throughput {throughput:+.0%}, "
            f"CPU per request {cpu:+.0%} ({served_row['cpu_ms'] - local_row['cpu_ms']:+.2f} ms) (goal: at most +25%)"
        )
    error_texts = sorted({e for level in results.values() for e in level.errors})
    for text in error_texts[:5]:
        print(f"error: {text}")
    if refused:
        print(f"server refusals: {len(refused)}, e.g. {refused[0]}")
    if args.json:
        print(json.dumps({"cpu": cpu_description(), "model": label, "results": table, "errors": error_texts}))


if __name__ == "__main__":
    main()
