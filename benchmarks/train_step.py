"""Cost of one training step of the plain student, by memory format, optimizer implementation and torch.compile.

A step is forward, cross-entropy, backward and the optimizer's step, at the preset's image size. `nchw` is the
network and batch in PyTorch's default (contiguous) memory format, `loop` the same step in channels_last, as
training runs it (`hdkd.training.loop`). The optimizer is timm's factory, as in training
(`hdkd.training.optimizer`), run three ways by PyTorch, all in channels_last: `loop`, its CPU default, a loop
over the parameters (what training runs); the multi-tensor `foreach` kernels; and the `fused` kernel.
With --compile, a `torch.compile`d student joins the same rounds, and the seconds its first two steps took
(the compilation) are printed beside the per-step gain: compilation pays only where a run has enough steps
to earn it back. Prints a table of medians and the ratios to the loop.

    python benchmarks/train_step.py --presets tiny,small --threads 1
    python benchmarks/train_step.py --presets tiny --compile
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import nn

from hdkd.evaluation.timing import cpu_name, measure_latency
from hdkd.models import PRESETS, build_model
from hdkd.training.loop import channels_last

IMPLEMENTATIONS: dict[str, dict[str, bool]] = {"loop": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def train_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, nchw: bool = False, **optimizer: Any
) -> Callable[[], None]:
    """A student step with its own optimizer (AdamW, as `student.opt` says), ready to call repeatedly; in
    channels_last unless `nchw`."""
    model.train()
    if not nchw:
        model.to(memory_format=torch.channels_last)
        images = channels_last(images)
    opt = create_optimizer_v2(model, opt="adamw", lr=2e-3, weight_decay=0.05, **optimizer)

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (an ablation job has one core)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile'd student")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, {args.threads} thread(s), batch {args.batch}, 1-min load {os.getloadavg()[0]:.2f}")
    print(f"{'preset':<8}{'step':<10}{'median ms':>11}{'images/s':>10}{'x loop':>8}")
    for preset in args.presets.split(","):
        size = PRESETS[preset].img_size
        torch.manual_seed(0)
        images = torch.randn(args.batch, 3, size, size)
        labels = torch.randint(0, args.classes, (args.batch,))
        steps = {"nchw": train_step(build_model("student", preset, args.classes), images, labels, nchw=True)}
        for name, kwargs in IMPLEMENTATIONS.items():
            steps[name] = train_step(build_model("student", preset, args.classes), images, labels, **kwargs)
        compile_seconds = None
        if args.compile:
            steps["compiled"] = train_step(
                cast(nn.Module, torch.compile(build_model("student", preset, args.classes))), images, labels
            )
            began = time.perf_counter()
            steps["compiled"]()
            steps["compiled"]()
            compile_seconds = time.perf_counter() - began
        medians = {name: result["median_ms"] for name, result in measure_latency(steps, args.repeats).items()}
        for name, ms in medians.items():
            print(f"{preset:<8}{name:<10}{ms:>11.2f}{args.batch / ms * 1e3:>10.0f}{ms / medians['loop']:>8.2f}")
        if compile_seconds is not None:
            saved = (medians["loop"] - medians["compiled"]) / 1e3
            payback = f"{compile_seconds / saved:.0f} steps to pay back" if saved > 0 else "never pays back"
            print(f"{preset:<8}compiling took {compile_seconds:.1f} s (first two steps): {payback}")


if __name__ == "__main__":
    main()
