"""Which base model an artefact was made from: its name (the ``--model`` spec) and weights hash.

``headgame train`` writes ``headgame_base.json`` (``{"spec", "hash"}``) beside every adapter and
merged model it saves; the result JSONs (analysis.json, eval.json, fep.json, pruning.json) carry
``model.spec`` and ``model.hash``. The checks here refuse to combine artefacts of different base
models, with one line naming both, instead of a silent mismatch or a size-mismatch traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError
from headgame.io import write_json_atomic

BASE_FILE = "headgame_base.json"


def short_hash(digest: Any) -> str:
    """``sha256:`` and the first 12 hex digits, enough to tell two models apart in a message."""
    text = str(digest)
    return text[:19] + "…" if len(text) > 19 else text


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a (small) input file, recorded in the config.yaml of a comparison."""
    import hashlib

    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe(spec: Any, digest: Any) -> str:
    return f"{spec} ({short_hash(digest)})" if digest else str(spec)


def record_base(folder: str | Path, spec: str, digest: str) -> Path:
    """Write ``headgame_base.json`` into ``folder`` (an adapter or a merged model); an adapter's
    ``adapter_config.json`` also gets ``base_model_name_or_path`` = ``spec``."""
    folder = Path(folder)
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        cfg = json.loads(adapter_config.read_text())
        if cfg.get("base_model_name_or_path") != spec:
            cfg["base_model_name_or_path"] = spec
            write_json_atomic(adapter_config, cfg, indent=2)
    return write_json_atomic(folder / BASE_FILE, {"spec": spec, "hash": digest})


def read_base(folder: str | Path) -> dict[str, Any] | None:
    """The base model recorded in ``folder``, or None when it records none (made by other tools)."""
    path = Path(folder) / BASE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeadgameError(f"{path} is not valid JSON ({exc}); delete it (the base-model check is then skipped) or re-train") from None
    if not isinstance(data, dict) or not isinstance(data.get("hash"), str):
        raise HeadgameError(f"{path} names no base-model hash; delete it (the base-model check is then skipped) or re-train")
    return {"spec": str(data.get("spec") or "an unnamed model"), "hash": data["hash"]}


def base_of(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """For a loaded model folder that records its base (a merged model of ``train --save-merged``),
    that base; otherwise None."""
    if info.get("kind") != "dir" or not info.get("source"):
        return None
    return read_base(Path(str(info["source"])))


def result_identity(model: Mapping[str, Any]) -> dict[str, Any]:
    """The base model behind a result JSON's ``model`` block: its recorded base when it is a merged
    model, else the model itself (an adapter applied on top does not change the base)."""
    base = model.get("base")
    if isinstance(base, Mapping) and base.get("hash"):
        return {"spec": base.get("spec"), "hash": base["hash"]}
    return {"spec": model.get("spec"), "hash": model.get("hash")}
