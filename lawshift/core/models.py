"""Loading models and tokenizers safely: safetensors only, no remote code, clear errors, context-size guard.

The base stage writes `models/base/`: either a full model directory (the offline tiny model) or a
`base.json` pointer to a hub id or local path, so a multi-GB hub model is not copied into the DVC cache.
The pointer pins what it points to: for a hub id the commit it resolved in the local Hugging Face cache
(`model.revision`, default what `main` points to), and for both the sha256 of every file (weights, tokenizer,
config). So a new snapshot or changed local files give another `models/base/` (and rerun everything downstream once
the base stage reruns: `dvc repro -f base` after updating the cache, which DVC cannot see). Every later stage calls
`resolve_base(paths.BASE)`, which returns the pinned local folder after checking the files are still the recorded
ones, and loads from there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from lawshift.core import numerics
from lawshift.core.files import InputError, atomic_path, file_digest, read_json
from lawshift.core.params import param_error

POINTER = "base.json"
numerics.configure_torch()  # every stage that runs torch loads its models through here


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
    """The local folder of the model the base stage settled on (a hub id's pinned snapshot), its files checked
    against the recorded sha256s."""
    base_dir = Path(base_dir)
    if (base_dir / POINTER).is_file():
        pointer = read_json(base_dir / POINTER)
        name = pointer.get("name_or_path") if isinstance(pointer, dict) else None
        if not isinstance(name, str) or not name:
            raise InputError(base_dir / POINTER, "must be an object with a non-empty string", field="name_or_path")
        check_local_model(name, allow_pickle=True)  # a local path that is gone fails here, naming the path
        folder = Path(name) if Path(name).exists() else hub_snapshot(name, pointer.get("revision"))
        recorded = pointer.get("files")
        if isinstance(recorded, dict) and file_hashes(folder) != recorded:
            raise InputError(folder, f"the model's files changed since stage base recorded them in "
                                     f"{base_dir / POINTER}; rerun it: dvc repro -f base")
        return str(folder)
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

        check_adapter(adapter)
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model


def check_adapter(adapter: str | Path) -> None:
    if not (Path(adapter) / "adapter_model.safetensors").is_file():
        raise InputError(adapter, "no adapter_model.safetensors: run the train stage first")


def context_size(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(config, needed: int, what: str) -> None:
    """Fail before any work when prompt + generation (or max_length) cannot fit the model's context; `what` is the
    param to change."""
    limit = context_size(config)
    if limit is not None and needed > limit:
        raise param_error(what, f"{needed} tokens needed but the model's context is {limit} tokens")


def write_pointer(out_dir: str | Path, pointer: dict) -> None:
    """models/base/base.json: `name_or_path`, `revision` (the hub commit, or None for a local path) and `files`
    (sha256 by relative path); resolve_base reads it back."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / POINTER).write_text(json.dumps(pointer, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def hub_cache() -> Path:
    """The local Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The folder of `repo_id` at `revision` (a branch, tag or commit; None = main) in the local cache, by the
    cache's own layout: models--{org}--{name}/refs/<revision> holds a commit, snapshots/<commit>/ its files."""
    repo = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    rev = revision or "main"
    ref = repo / "refs" / rev
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else rev
    folder = repo / "snapshots" / commit
    if not folder.is_dir():
        what = f"revision {rev!r}" if revision else "its main revision"
        raise InputError(repo_id, f"{what} is not in the local Hugging Face cache ({hub_cache()}); download it "
                                  f"first (huggingface-cli download {repo_id}"
                                  f"{' --revision ' + revision if revision else ''})", field="model.base")
    return folder


def file_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of every file below a model folder (weights, tokenizer, config), by relative path."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.relative_to(folder).as_posix().startswith(".")}


def settle_pointer(mp, out_dir: str | Path) -> dict:
    """Stage `base` for a hub id or local path (`mp`: the model params): resolve a hub id to its commit in the
    local cache, check the model loads safely, then write the pointer (name, commit, every file's sha256)
    atomically. Returns the base metrics."""
    local = Path(mp.base).exists()
    check_local_model(mp.base, mp.allow_pickle)  # a missing local-looking path fails here; a hub id passes
    folder = Path(mp.base) if local else hub_snapshot(mp.base, mp.revision)
    check_local_model(str(folder), mp.allow_pickle)
    load_tokenizer(str(folder), mp.trust_remote_code)  # fail here, not three stages later
    pointer = {"name_or_path": mp.base, "revision": None if local else folder.name, "files": file_hashes(folder)}
    with atomic_path(out_dir) as tmp:
        write_pointer(tmp, pointer)
    return {"base_kind": "pointer", "base_name_or_path": mp.base, "base_revision": pointer["revision"],
            "base_files": len(pointer["files"])}


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
