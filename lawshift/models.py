"""Loading models and tokenizers safely: safetensors only, no remote code, clear errors, context-size guard.

The base stage writes `models/base/`: either a full model directory (the offline tiny model) or a
`base.json` pointer to a hub id or local path, so a multi-GB hub model is not copied into the DVC cache.
Every later stage calls `resolve_base("models/base")` and loads from what it returns.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from lawshift.files import InputError, read_json

POINTER = "base.json"


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device supports it, fp32 otherwise (CPU bf16 matmuls are slow and lossy here)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_base(base_dir: str | Path) -> str:
    """The path or hub id the base stage settled on."""
    base_dir = Path(base_dir)
    if (base_dir / POINTER).is_file():
        pointer = read_json(base_dir / POINTER)
        name = pointer.get("name_or_path") if isinstance(pointer, dict) else None
        if not isinstance(name, str) or not name:
            raise InputError(base_dir / POINTER, "must be an object with a non-empty string", field="name_or_path")
        return name
    if (base_dir / "config.json").is_file():
        return str(base_dir)
    raise InputError(base_dir, "no model here: run the base stage first (dvc repro base)")


def check_local_model(name_or_path: str, allow_pickle: bool = False) -> None:
    """Refuse a missing local path, and pickle weights unless explicitly allowed."""
    path = Path(name_or_path)
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") != 1
    if not path.exists():
        if looks_local:
            raise InputError(name_or_path, "model path does not exist", field="model.base")
        return  # a hub id: resolved by from_pretrained from the local cache
    if not path.is_dir():
        raise InputError(name_or_path, "model path is not a directory", field="model.base")
    has_safe = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if not has_safe and has_pickle and not allow_pickle:
        raise InputError(name_or_path, "only pickle weights (*.bin) found; they can run arbitrary code when "
                                       "loaded. Convert to safetensors, or set model.allow_pickle: true",
                         field="model.base")


def _cannot_load(name_or_path: str, what: str, err: Exception) -> InputError:
    message = f"cannot load {what}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    if not Path(name_or_path).exists():
        message += " (a hub id is read from the local Hugging Face cache only: download the model there first)"
    return InputError(name_or_path, message, field="model.base")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_local_model(name_or_path, allow_pickle=True)  # only the path: no weights are read here
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:  # ValueError: a folder without tokenizer files
        raise _cannot_load(name_or_path, "tokenizer", err) from None


def load_config(name_or_path: str, trust_remote_code: bool = False):
    """The model's config alone (no weights): enough to check sizes before anything heavy is loaded."""
    from transformers import AutoConfig

    check_local_model(name_or_path, allow_pickle=True)  # only the path: no weights are read here
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _cannot_load(name_or_path, "config", err) from None


def load_model(name_or_path: str, *, device: torch.device, trust_remote_code: bool = False,
               allow_pickle: bool = False, dtype: torch.dtype | None = None, quantization_config=None,
               adapter: str | None = None):
    """A causal LM in eval mode on `device`, optionally with a PEFT adapter on top."""
    from transformers import AutoModelForCausalLM

    check_local_model(name_or_path, allow_pickle)
    kwargs = dict(trust_remote_code=trust_remote_code, dtype=dtype or compute_dtype(device),
                  use_safetensors=None if allow_pickle else True)
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": device})
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:  # ValueError: a folder without a usable config.json
        raise _cannot_load(name_or_path, "model", err) from None
    if quantization_config is None:
        model.to(device)
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_model.safetensors").is_file():
            raise InputError(adapter, "no adapter_model.safetensors: run the train stage first")
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model


def context_size(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(config, needed: int, what: str, params_file: str = "params.yaml") -> None:
    """Fail before any work when prompt + generation (or max_length) cannot fit the model's context."""
    limit = context_size(config)
    if limit is not None and needed > limit:
        raise InputError(params_file, f"{needed} tokens needed but the model's context is {limit} tokens", field=what)


def write_pointer(out_dir: str | Path, name_or_path: str) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / POINTER).write_text(json.dumps({"name_or_path": name_or_path}) + "\n", encoding="utf-8")


def offline_env() -> None:
    """No weights or data are ever downloaded by the pipeline: the hub is read from its local cache only.

    An explicit HF_HUB_OFFLINE=0 in the environment still wins (setdefault).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # huggingface_hub reads the variables once, when it is imported; a stage that imported transformers first
    # would otherwise still go online (a model id missing from the cache then retried for a minute, not failed).
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
        hub.HF_HUB_OFFLINE = value.upper() in {"1", "ON", "YES", "TRUE"}
