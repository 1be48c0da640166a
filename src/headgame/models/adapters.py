"""Applying a peft adapter folder to a loaded model, after checking it fits that model.

The check reads ``adapter_config.json`` and the shapes in ``adapter_model.safetensors`` (no
weights are loaded for it): every LoRA pair must name a module of the base model whose input
and output sizes match. An adapter made for another base model therefore fails with one line
naming the base model it was made for, instead of a size-mismatch traceback. Before it, an
adapter written by ``headgame train`` (one with ``headgame_base.json``) must name the weights hash
of the model it is applied to (:mod:`headgame.models.identity`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from headgame.errors import HeadgameError
from headgame.models.identity import describe, read_base


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    if not folder.is_dir() or not path.is_file():
        raise HeadgameError(f"--adapter {folder} has no adapter_config.json; pass a peft adapter folder (model.save_pretrained(DIR))")
    try:
        cfg = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeadgameError(f"{path} is not valid JSON ({exc}); re-save the adapter") from None
    if not isinstance(cfg, dict):
        raise HeadgameError(f"{path} is not a JSON object; re-save the adapter")
    return cfg


def _module_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear or GPT-2 Conv1D."""
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    if type(module).__name__ == "Conv1D":
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])


def check_adapter(model: nn.Module, folder: Path, model_name: str) -> dict:
    """Raise a one-line error if the adapter in ``folder`` cannot apply to ``model``."""
    cfg = read_adapter_config(folder)
    base_name = cfg.get("base_model_name_or_path") or "an unnamed base model"
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return cfg  # pickle weights: peft itself will report a mismatch
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    modules = dict(model.named_modules())
    for key, shape in shapes.items():
        if ".lora_A." not in key:
            continue
        path = key.split(".lora_A.")[0]
        for prefix in ("base_model.model.", ""):
            if path.startswith(prefix) and path[len(prefix):] in modules:
                path = path[len(prefix):]
                break
        mod = modules.get(path)
        b_shape = shapes.get(key.replace(".lora_A.", ".lora_B."))
        dims = _module_dims(mod) if mod is not None else None
        if mod is None or dims is None or shape[1] != dims[0] or (b_shape is not None and b_shape[0] != dims[1]):
            found = f"has shape in={dims[0]}, out={dims[1]}" if dims else "does not exist"
            want = f"in={shape[1]}" + (f", out={b_shape[0]}" if b_shape else "")
            raise HeadgameError(
                f"adapter {folder} was made for {base_name} (adapter_config.json), not {model_name}: module "
                f"{path} {found} but the adapter expects {want}; pass --model {base_name} or an adapter trained on {model_name}"
            )
    return cfg


def check_base(folder: Path, model_name: str, model_hash: str | None) -> dict | None:
    """Refuse an adapter whose recorded base model (``headgame_base.json``) is not the loaded one.

    Returns the recorded base, or None for an adapter that records none (made by other tools),
    which only gets the shape check of :func:`check_adapter`."""
    base = read_base(folder)
    if base is None or not model_hash or base["hash"] == model_hash:
        return base
    raise HeadgameError(
        f"adapter {folder} was trained on {describe(base['spec'], base['hash'])}, not "
        f"{describe(model_name, model_hash)}; pass --model {base['spec']}"
    )


def apply_adapter(model: nn.Module, folder: str, *, merge: bool, model_name: str,
                  model_hash: str | None = None) -> tuple[nn.Module, dict]:
    """The model with the adapter (merged into the weights when ``merge``) and a description.

    ``model_hash`` is the loaded model's weights hash (``LoadedModel.info["hash"]``): an adapter
    recording another base model is refused."""
    from peft import PeftModel

    from headgame.models.hashing import files_sha256

    path = Path(folder).expanduser()
    read_adapter_config(path)  # a folder that is no adapter at all is named as such first
    base = check_base(path, model_name, model_hash)
    cfg = check_adapter(model, path, model_name)
    try:
        wrapped = PeftModel.from_pretrained(model, str(path))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise HeadgameError(
            f"adapter {path} does not fit {model_name} ({str(exc).splitlines()[0][:160]}); it was made for "
            f"{cfg.get('base_model_name_or_path') or 'another base model'}"
        ) from None
    wrapped.eval()
    info: dict[str, Any] = {
        "path": str(path.resolve()), "peft_type": cfg.get("peft_type"), "r": cfg.get("r"),
        "lora_alpha": cfg.get("lora_alpha"), "target_modules": cfg.get("target_modules"),
        "base_model_name_or_path": cfg.get("base_model_name_or_path"), "merged": merge,
        "hash": "sha256:" + files_sha256(sorted(path.glob("*.safetensors"))), "trained_on": base,
    }
    if merge:
        return wrapped.merge_and_unload(), info
    return wrapped, info


def attach_adapter(loaded, adapter: str, *, merge: bool = False):
    """A :class:`LoadedModel` with the peft adapter ``adapter`` applied (merged when ``merge``).

    The model info gains ``adapter_hash`` (sha256 of the adapter's safetensors) and ``adapter``
    (the description of :func:`apply_adapter`); the layout is rebuilt for the wrapped model.
    """
    from headgame.models.layout import HeadLayout
    from headgame.models.loaded import LoadedModel

    path = Path(adapter).expanduser()
    model, desc = apply_adapter(loaded.model, str(path), merge=merge, model_name=str(loaded.info.get("spec")),
                                model_hash=loaded.info.get("hash"))
    model.eval()
    info = {**loaded.info, "adapter": desc, "adapter_hash": desc["hash"]}
    return LoadedModel(model, loaded.tokenizer, HeadLayout.from_model(model), info)
