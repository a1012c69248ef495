"""Tests for lawshift.params: the repo's params files load, defaults match the original workflow, bad keys fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lawshift.files import InputError
from lawshift.params import (
    DataParams,
    EvalParams,
    FilterParams,
    ModelParams,
    Params,
    SampleParams,
    TinyParams,
    TrainParams,
    load_params,
    params_from_dict,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_repo_params_yaml_loads():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    assert p.model.base == "tiny"
    assert p.model.trust_remote_code is False and p.model.allow_pickle is False
    assert isinstance(p.train.learning_rate, float) and isinstance(p.train.num_train_epochs, float)


def leaf_keys(obj, prefix=""):
    out = set()
    for key, value in obj.items():
        where = f"{prefix}{key}"
        out |= leaf_keys(value, f"{where}.") if isinstance(value, dict) else {where}
    return out


def test_repo_params_yaml_sets_every_key():
    # DVC tracks what params.yaml spells out: a dataclass field missing from it would change silently
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert leaf_keys(raw) == leaf_keys(to_dict(Params()))


@pytest.mark.parametrize("path", PROFILES, ids=[p.name for p in PROFILES])
def test_profiles_load(path):
    assert isinstance(load_params(path), Params)


ORIGINAL_DEFAULTS = [
    (SampleParams, "num_samples", 8),
    (SampleParams, "temperature", 0.8),
    (SampleParams, "top_p", 0.95),
    (SampleParams, "max_new_tokens", 2048),
    (TrainParams, "lora_r", 64),
    (TrainParams, "lora_alpha", 16),
    (TrainParams, "lora_dropout", 0.05),
    (TrainParams, "num_train_epochs", 3.0),
    (TrainParams, "per_device_train_batch_size", 2),
    (TrainParams, "gradient_accumulation_steps", 8),
    (TrainParams, "learning_rate", 2e-4),
    (TrainParams, "warmup_steps", 100),
    (TrainParams, "logging_steps", 10),
    (TrainParams, "save_steps", 100),
    (TrainParams, "weight_decay", 0.01),
    (TrainParams, "max_length", 4096),
    (TrainParams, "load_in_4bit", True),
    (TrainParams, "lr_scheduler_type", "cosine"),
    (TrainParams, "lora_target_modules", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    (ModelParams, "base", "Qwen/Qwen2.5-0.5B-Instruct"),
    (ModelParams, "trust_remote_code", False),
    (ModelParams, "allow_pickle", False),
]


@pytest.mark.parametrize("cls,key,value", ORIGINAL_DEFAULTS, ids=[f"{c.__name__}.{k}" for c, k, _ in ORIGINAL_DEFAULTS])
def test_defaults_are_the_original_workflows(cls, key, value):
    got = getattr(cls(), key)
    assert got == value and type(got) is type(value)


def test_empty_file_gives_defaults(tmp_path):
    assert load_params(write(tmp_path, "")) == Params()
    assert params_from_dict({"sample": {}}) == Params()


def test_round_trip():
    p = load_params(REPO / "params.yaml")
    assert params_from_dict(to_dict(p)) == p


def test_partial_section_keeps_other_defaults(tmp_path):
    p = load_params(write(tmp_path, "sample:\n  num_samples: 4\nmodel:\n  tiny:\n    seed: 3\n"))
    assert p.sample == dataclasses.replace(SampleParams(), num_samples=4)
    assert p.model.tiny == dataclasses.replace(TinyParams(), seed=3)
    assert (p.data, p.filter, p.train, p.eval) == (DataParams(), FilterParams(), TrainParams(), EvalParams())


UNKNOWN_KEYS = [
    # (id, yaml, dotted key named, suggestion)
    ("top_level", "smaple:\n  num_samples: 4\n", "smaple", "sample"),
    ("in_section", "sample:\n  num_sample: 4\n", "sample.num_sample", "num_samples"),
    ("nested", "model:\n  tiny:\n    vocab_sise: 10\n", "model.tiny.vocab_sise", "vocab_size"),
    ("train", "train:\n  lerning_rate: 0.1\n", "train.lerning_rate", "learning_rate"),
]


@pytest.mark.parametrize("text,key,close", [c[1:] for c in UNKNOWN_KEYS], ids=[c[0] for c in UNKNOWN_KEYS])
def test_unknown_key(tmp_path, text, key, close):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        load_params(path)
    assert str(exc.value) == f"{path}: field '{key}': unknown key (did you mean '{close}'?)"


def test_unknown_key_without_close_match(tmp_path):
    path = write(tmp_path, "sample:\n  zzzzzz: 1\n")
    with pytest.raises(InputError) as exc:
        load_params(path)
    assert str(exc.value) == f"{path}: field 'sample.zzzzzz': unknown key"


WRONG_TYPES = [
    # (id, yaml, dotted key named, fragment)
    ("str_for_int", "sample:\n  num_samples: '8'\n", "sample.num_samples", "expected int, got str"),
    ("bool_for_int", "sample:\n  num_samples: true\n", "sample.num_samples", "expected int, got bool"),
    ("float_for_int", "train:\n  lora_r: 64.0\n", "train.lora_r", "expected int, got float"),
    ("int_for_bool", "train:\n  load_in_4bit: 1\n", "train.load_in_4bit", "expected bool, got int"),
    ("str_for_bool", "filter:\n  dedup: 'yes'\n", "filter.dedup", "expected bool, got str"),
    ("bool_for_float", "sample:\n  temperature: false\n", "sample.temperature", "expected float, got bool"),
    ("str_for_float", "sample:\n  temperature: hot\n", "sample.temperature", "expected float, got str"),
    ("int_for_str", "model:\n  base: 5\n", "model.base", "expected str, got int"),
    ("null_for_int", "sample:\n  seed:\n", "sample.seed", "expected int, got NoneType"),
    ("str_for_list", "train:\n  lora_target_modules: q_proj\n", "train.lora_target_modules", "expected a list"),
    ("list_item", "train:\n  lora_target_modules: [q_proj, 1]\n", "train.lora_target_modules[1]",
     "expected str, got int"),
    ("eval_folders_item", "eval:\n  folders: [[a]]\n", "eval.folders[0]", "expected str, got list"),
    ("scalar_section", "sample: 3\n", "sample", "expected a mapping, got int"),
    ("list_section", "train: [1, 2]\n", "train", "expected a mapping, got list"),
    ("scalar_nested_section", "model:\n  tiny: 5\n", "model.tiny", "expected a mapping, got int"),
]


@pytest.mark.parametrize("text,key,fragment", [c[1:] for c in WRONG_TYPES], ids=[c[0] for c in WRONG_TYPES])
def test_wrong_type(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        load_params(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: field '{key}': ") and fragment in msg and "\n" not in msg


@pytest.mark.parametrize("text,section,key,value", [
    ("sample:\n  temperature: 1\n", "sample", "temperature", 1.0),
    ("train:\n  num_train_epochs: 3\n", "train", "num_train_epochs", 3.0),
    ("model:\n  tiny:\n    warmup_lr: 1\n", "model", "tiny", dataclasses.replace(TinyParams(), warmup_lr=1.0)),
], ids=["temperature", "epochs", "nested"])
def test_int_accepted_for_float(tmp_path, text, section, key, value):
    got = getattr(getattr(load_params(write(tmp_path, text)), section), key)
    assert got == value
    leaf = got.warmup_lr if isinstance(got, TinyParams) else got
    assert type(leaf) is float


@pytest.mark.parametrize("text,fragment", [
    ("sample: [1, 2\n", "invalid YAML"),
    ("sample:\n  a: 1\n b: 2\n", "invalid YAML"),
    ("- data\n- model\n", "expected a mapping of sections"),
    ("just a string\n", "expected a mapping of sections"),
    ("42\n", "expected a mapping of sections"),
], ids=["unclosed_list", "bad_indent", "list", "string", "number"])
def test_bad_file(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        load_params(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)) and fragment in msg and "\n" not in msg


def test_yaml_tags_are_not_executed(tmp_path):
    # safe_load: a python tag is a YAML error, never an object construction
    path = write(tmp_path, "sample: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return out


@pytest.mark.parametrize("path", sorted((REPO / "profiles").glob("*.yaml")), ids=lambda p: p.name)
def test_profiles_set_every_key_params_yaml_sets(path):
    """A shipped profile replaces params.yaml whole, so it must set every key DVC tracks there."""
    ours = _keys(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
    theirs = _keys(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert ours == theirs
