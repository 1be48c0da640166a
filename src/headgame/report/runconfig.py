"""The config.yaml of a comparison (``analyze --compare``, ``eval --compare``): its inputs, their
hashes and its options, written beside compare.json like every command's config.yaml.

A comparison may write into another run's folder (``eval --compare`` defaults to the METHOD run's
folder), whose config.yaml is that run's: there the file is ``compare_config.yaml`` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headgame.io import write_text_atomic

CONFIG_NAMES = ("config.yaml", "compare_config.yaml")


def _owner(path: Path) -> Any:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data.get("command") if isinstance(data, dict) else None


def write_compare_config(out: str | Path, command: str, config: dict[str, Any]) -> Path:
    """Write ``{"command": command, **config}`` as YAML; returns the path written."""
    import yaml

    out = Path(out)
    path = out / "config.yaml"
    if path.exists() and _owner(path) != command:
        path = out / "compare_config.yaml"  # config.yaml is the run's own
    text = yaml.safe_dump({"command": command, **config}, sort_keys=False, allow_unicode=True)
    return write_text_atomic(path, text)
