"""What a result was measured on: CPU or GPU name, thread count, package versions."""

from __future__ import annotations

import platform
from pathlib import Path

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
