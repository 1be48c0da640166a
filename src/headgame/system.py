"""What a result was measured on: CPU or GPU name, thread count, package versions."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from headgame.version import __version__


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def device_name(threads: int | None = None) -> str:
    """``cuda: <GPU name>`` when a GPU is visible, else ``cpu: <model name>, N threads``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {cpu_name()}, {threads or torch.get_num_threads()} threads"


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "headgame": __version__}
    for name in ("torch", "transformers", "numpy", "scipy", "scikit-learn", "peft", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def matmul_peak(device: Any = "cpu", dtype: Any = "float32", threads: int | None = None, *, n: int | None = None,
                repeats: int = 5, warmup: int = 2) -> dict[str, Any]:
    """The peak FLOP/s of the cores a benchmark uses, measured, not looked up in a data sheet.

    Method: two ``n`` x ``n`` random matrices of ``dtype`` on ``device``; ``warmup`` untimed
    products (kernel selection, caches, GPU clocks ramping up), then ``repeats`` timed
    ``torch.matmul`` calls, each stopped after ``torch.cuda.synchronize`` on a GPU; a product
    costs 2·n³ FLOPs and the peak is 2·n³ / the median time. A large square matmul is the
    fastest dense work the BLAS library (CPU) or cuBLAS (GPU) does, so this is the attainable
    peak of that device, dtype and thread count: the denominator of :func:`peak_fraction`
    (an MFU: model FLOPs over this peak). Defaults: n = 2048 on the CPU, 8192 on a GPU (use
    ``dtype="bfloat16"`` there: the tensor cores). ``threads``: torch's intra-op threads while
    measuring (restored after); None keeps the current setting.

    Returns ``{"flops_per_s", "method", "n", "dtype", "device", "threads", "seconds"}``.
    """
    import statistics
    import time

    import torch

    dev = torch.device(device)
    tdtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(tdtype, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype; pass e.g. 'float32' or torch.bfloat16")
    size = int(n or (8192 if dev.type == "cuda" else 2048))
    if size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"matmul_peak needs n >= 1, repeats >= 1 and warmup >= 0, got {size}, {repeats}, {warmup}")
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        gen = torch.Generator().manual_seed(0)  # drawn on the CPU, the same matrices on every device
        a = torch.randn(size, size, generator=gen).to(device=dev, dtype=tdtype)
        b = torch.randn(size, size, generator=gen).to(device=dev, dtype=tdtype)

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        times = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                sync()
                t0 = time.perf_counter()
                torch.matmul(a, b)
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)
    median = statistics.median(times)
    name = str(tdtype).removeprefix("torch.")
    return {
        "flops_per_s": 2.0 * size**3 / median,
        "method": f"median of {repeats} timed torch.matmul of two {size}x{size} {name} matrices on {dev} after {warmup} "
                  f"warm-up runs; 2*n^3 FLOPs per product; {used} CPU thread(s)",
        "n": size, "dtype": name, "device": str(dev) if dev.type == "cpu" else device_label(dev),
        "threads": used, "seconds": median,
    }


def device_label(device: Any) -> str:
    """``cuda:0 (NVIDIA H200)`` for a GPU, ``cpu`` for the CPU."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return str(dev)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def peak_fraction(work_flops: float, seconds: float, peak: dict[str, Any]) -> dict[str, Any]:
    """How much of the measured peak (:func:`matmul_peak`) a piece of work reached.

    ``work_flops``: the analytic FLOPs of the work (e.g. ``headgame.prune.cost.analytic_flops``
    x sequences for a forward, :func:`headgame.prune.cost.step_flops` for a training step);
    ``seconds``: its wall time. ``fraction_of_peak`` = (work_flops / seconds) / peak FLOP/s, the
    model-FLOPs utilisation (MFU) against this device's own matmul peak."""
    if seconds <= 0 or not peak.get("flops_per_s"):
        raise ValueError(f"peak_fraction needs seconds > 0 and a peak with flops_per_s > 0, got {seconds} and {peak.get('flops_per_s')}")
    achieved = float(work_flops) / float(seconds)
    return {"work_flops": float(work_flops), "seconds": float(seconds), "achieved_flops_per_s": achieved,
            "peak": dict(peak), "fraction_of_peak": achieved / float(peak["flops_per_s"])}
