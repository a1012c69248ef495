"""Tests for lawshift.core.params: the repo's params files load, defaults match the original workflow, bad keys and
types
fail, and every rule of every section (ranges, choices, relations between keys) fails at load, naming params.yaml and
`section.key`. The rules' tables moved here from the sampling, filtering, scoring and eval tests when the checks moved
into the section dataclasses' `problems()`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lawshift.core.files import InputError
from lawshift.core.params import (
    EVAL_BACKENDS,
    PARAMS_FILE,
    SAMPLE_BACKENDS,
    WEIGHTINGS,
    DataParams,
    EvalParams,
    FilterParams,
    ModelParams,
    Params,
    RoundParams,
    SampleParams,
    TinyParams,
    TrainParams,
    load_params,
    param_error,
    params_from_dict,
    to_dict,
)

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
    expected = to_dict(Params())
    expected["rounds"] = {name: to_dict(RoundParams()) for name in raw["rounds"]}  # every round spells out its keys
    assert leaf_keys(raw) == leaf_keys(expected)
    assert list(raw["rounds"]) == ["round1", "round2"]


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
    p = load_params(write(tmp_path, "seed: 3\nsample:\n  num_samples: 4\nmodel:\n  tiny:\n    warmup_steps: 5\n"))
    assert p.seed == 3
    assert p.sample == dataclasses.replace(SampleParams(), num_samples=4)
    assert p.model.tiny == dataclasses.replace(TinyParams(), warmup_steps=5)
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
    ("null_for_int", "sample:\n  batch_size:\n", "sample.batch_size", "expected int, got NoneType"),
    ("str_for_top_level_int", "seed: one\n", "seed", "expected int, got str"),
    ("section_seed_is_gone", "sample:\n  seed: 1\n", "sample.seed", "unknown key"),
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
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    theirs = _keys(raw)
    # the rounds may differ in number; each sets every key of a round
    assert {k for k in ours if not k.startswith("rounds.")} == {k for k in theirs if not k.startswith("rounds.")}
    assert all(set(r) == set(to_dict(RoundParams())) for r in raw["rounds"].values())


@pytest.mark.parametrize("text, value", [("model:\n  revision: v1.0\n", "v1.0"), ("model:\n  revision:\n", None)],
                         ids=["str", "null"])
def test_optional_str_takes_a_string_or_null(tmp_path, text, value):
    assert load_params(write(tmp_path, text)).model.revision == value
    with pytest.raises(InputError, match=r"field 'model\.revision': expected str, got int"):
        load_params(write(tmp_path, "model:\n  revision: 5\n"))


# --- the rules of each section: one row each ------------------------------------------------------------------------

def at_least(low, value) -> str:
    return f"must be >= {low}, got {value!r}"


RULES = [
    # (section, bad values, key named, message, values at the edge that pass)
    ("sample", {"backend": "tgi"}, "backend", "unknown backend 'tgi', expected one of ('hf', 'vllm')",
     {"backend": "vllm"}),
    *[("sample", {k: 0}, k, at_least(1, 0), {k: 1})
      for k in ("num_samples", "max_new_tokens", "batch_size", "num_shards", "tensor_parallel_size")],
    ("sample", {"temperature": -0.1}, "temperature", "must be >= 0, got -0.1", {"temperature": 0.0}),
    ("sample", {"top_p": 0.0}, "top_p", "must be in (0, 1], got 0.0", {"top_p": 1.0}),
    ("sample", {"top_p": 1.5}, "top_p", "must be in (0, 1], got 1.5", {"top_p": 1e-6}),
    ("sample", {"num_shards": 2, "shard_index": 2}, "shard_index", "must be in [0, num_shards=2), got 2",
     {"num_shards": 2, "shard_index": 1}),
    ("sample", {"shard_index": -1}, "shard_index", "must be in [0, num_shards=1), got -1", {"shard_index": 0}),
    ("sample", {"shard_index": 1}, "shard_index", "must be in [0, num_shards=1), got 1", {"num_shards": 2,
                                                                                          "shard_index": 1}),
    ("filter", {"weighting": "sqrt"}, "weighting", "unknown weighting 'sqrt', expected one of ('inverse_n', 'uniform')",
     {"weighting": "uniform"}),
    # is_correct no longer checks the tolerance itself: a negative one cannot load
    ("filter", {"term_tolerance": -1}, "term_tolerance", at_least(0, -1), {"term_tolerance": 0}),
    *[("train", {k: 0}, k, at_least(1, 0), {k: 1})
      for k in ("lora_r", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps",
                "save_steps", "num_processes")],
    *[("eval", {k: 0}, k, at_least(1, 0), {k: 1}) for k in ("num_samples", "batch_size", "max_new_tokens")],
    ("eval", {"train_subset": -1}, "train_subset", at_least(0, -1), {"train_subset": 0}),
    ("eval", {"temperature": -0.1}, "temperature", "must be >= 0 (0 = greedy), got -0.1", {"temperature": 0.0}),
    ("eval", {"top_p": 0.0}, "top_p", "must be in (0, 1], got 0.0", {"top_p": 1.0}),
    ("eval", {"top_p": 1.5}, "top_p", "must be in (0, 1], got 1.5", {"top_p": 0.5}),
    ("eval", {"term_low": 200}, "term_high", "needs 0 <= term_low <= term_high, got 200, 120", {"term_low": 120}),
    ("eval", {"term_low": -1}, "term_high", "needs 0 <= term_low <= term_high, got -1, 120", {"term_low": 0}),
    ("eval", {"term_low": 10, "term_high": 9}, "term_high", "needs 0 <= term_low <= term_high, got 10, 9",
     {"term_low": 10, "term_high": 10}),
    ("eval", {"backend": "tgi"}, "backend", "unknown backend 'tgi', expected one of ('hf', 'vllm')",
     {"backend": "vllm"}),
    ("sample", {"chunk_size": -1}, "chunk_size", "must be >= 0, got -1", {"chunk_size": 0}),
    ("sample", {"min_accepted": -1}, "min_accepted", at_least(0, -1), {"min_accepted": 0}),
    ("sample", {"max_samples": 4}, "max_samples", "must be 0 or in [num_samples=8, 4096], got 4", {"max_samples": 8}),
    ("sample", {"max_samples": 4097}, "max_samples", "must be 0 or in [num_samples=8, 4096], got 4097",
     {"max_samples": 4096}),
    ("sample", {"min_accepted": 1}, "max_samples", "min_accepted 1 asks for more draws, but max_samples 0 allows "
     "none beyond num_samples=8", {"min_accepted": 1, "max_samples": 9}),
    ("eval", {"chunk_size": -1}, "chunk_size", "must be >= 0, got -1", {"chunk_size": 0}),
    ("sample", {"gpu_memory_utilization": 0.0}, "gpu_memory_utilization", "must be in (0, 1], got 0.0",
     {"gpu_memory_utilization": 1.0}),
    ("eval", {"gpu_memory_utilization": 1.5}, "gpu_memory_utilization", "must be in (0, 1], got 1.5",
     {"gpu_memory_utilization": 1.0}),
    ("eval", {"tensor_parallel_size": 0}, "tensor_parallel_size", "must be >= 1, got 0", {"tensor_parallel_size": 1}),
    *[("model.tiny", {k: 0}, k, at_least(1, 0), {k: 1})
      for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "warmup_batch_size")],
    ("model.tiny", {"warmup_steps": -1}, "warmup_steps", at_least(0, -1), {"warmup_steps": 0}),
    ("model.tiny", {"term_noise": 1.5}, "term_noise", "must be in [0, 1], got 1.5", {"term_noise": 1.0}),
    ("model.tiny", {"term_noise": -0.1}, "term_noise", "must be in [0, 1], got -0.1", {"term_noise": 0.0}),
]
RULE_IDS = [f"{section}.{key}={'/'.join(map(str, bad.values()))}" for section, bad, key, _, _ in RULES]
SECTIONS = {"sample": SampleParams, "filter": FilterParams, "train": TrainParams, "eval": EvalParams,
            "model.tiny": TinyParams}


def nest(section: str, values: dict) -> dict:
    """{"model": {"tiny": values}} for section "model.tiny"."""
    for name in reversed(section.split(".")):
        values = {name: values}
    return values


def section_of(p: Params, section: str):
    for name in section.split("."):
        p = getattr(p, name)
    return p


@pytest.mark.parametrize("section, bad, key, message, good", RULES, ids=RULE_IDS)
def test_rule_fails_at_load_naming_the_field(tmp_path, section, bad, key, message, good):
    # the section's own list of problems, the one load reports first (num_shards 0 also breaks shard_index's rule)
    problems = SECTIONS[section](**bad).problems()
    assert problems[0] == (key, message) and len(problems) == 1 + (bad == {"num_shards": 0})
    assert SECTIONS[section](**good).problems() == []
    # from a dict (the stages' params.yaml by default) and from a file: one line naming file and key
    with pytest.raises(InputError) as exc:
        params_from_dict(nest(section, bad))
    assert str(exc.value) == f"{PARAMS_FILE}: field '{section}.{key}': {message}"
    path = write(tmp_path, yaml.safe_dump(nest(section, bad)))
    with pytest.raises(InputError) as exc:
        load_params(path)
    assert str(exc.value) == f"{path}: field '{section}.{key}': {message}"
    # the value at the edge loads, and is what the section holds
    got = section_of(load_params(write(tmp_path, yaml.safe_dump(nest(section, good)))), section)
    assert {k: getattr(got, k) for k in good} == good


ROUND_RULES = [
    # (rounds, key named, message)
    ({}, "rounds", "needs at least one round (round1)"),
    ({"r1": {}}, "rounds.r1", "round 1 must be named round1"),
    ({"round1": {}, "round3": {"policy": "round1"}}, "rounds.round3", "round 2 must be named round2"),
    ({"round1": {"policy": "round0"}}, "rounds.round1.policy", "round1 samples from base, got 'round0'"),
    ({"round1": {}, "round2": {"policy": "base"}}, "rounds.round2.policy", "round2 samples from round1, got 'base'"),
    ({"round1": {"keep_previus": True}}, "rounds.round1.keep_previus", "unknown key (did you mean 'keep_previous'?)"),
    ({"round1": {"keep_previous": "yes"}}, "rounds.round1.keep_previous", "expected bool, got str 'yes'"),
    ({"round1": 3}, "rounds.round1", "expected a mapping, got int"),
    ([], "rounds", "expected a mapping, got list"),
]


@pytest.mark.parametrize("rounds, key, message", ROUND_RULES, ids=[r[1] + ":" + r[2][:20] for r in ROUND_RULES])
def test_round_rules(rounds, key, message):
    with pytest.raises(InputError) as exc:
        params_from_dict({"rounds": rounds})
    assert str(exc.value) == f"{PARAMS_FILE}: field '{key}': {message}"


def test_rounds_in_order_load_and_an_empty_round_is_a_default_one():
    p = params_from_dict({"rounds": {"round1": None, "round2": {"policy": "round1", "keep_previous": True},
                                     "round3": {"policy": "round2"}}})
    assert list(p.rounds) == ["round1", "round2", "round3"]
    assert p.rounds["round1"] == RoundParams() and p.rounds["round2"].keep_previous
    assert list(Params().rounds) == ["round1"]  # the original workflow: one pass


def test_a_round_by_name_or_the_one_line_error():
    p = params_from_dict({"rounds": {"round1": {}, "round2": {"policy": "round1", "keep_previous": True}}})
    assert p.round("round2") == RoundParams("round1", True) and p.round("round1") == RoundParams()
    with pytest.raises(InputError) as exc:
        p.round("round3")
    assert str(exc.value) == f"{PARAMS_FILE}: field 'rounds': no round 'round3'; the rounds are ['round1', 'round2']"
    with pytest.raises(InputError, match=r"^other.yaml: field 'rounds': no round 'sft'"):
        p.round("sft", "other.yaml")


def test_draw_limit():
    assert SampleParams(num_samples=8).draw_limit == 8
    assert SampleParams(num_samples=8, max_samples=32).draw_limit == 8  # resampling off
    assert SampleParams(num_samples=8, min_accepted=2, max_samples=32).draw_limit == 32


@pytest.mark.parametrize("cls", [DataParams, ModelParams, *SECTIONS.values()], ids=lambda c: c.__name__)
def test_defaults_obey_the_rules(cls):
    assert getattr(cls(), "problems", list)() == []


@pytest.mark.parametrize("path", [REPO / "params.yaml", *PROFILES], ids=lambda p: p.name)
def test_shipped_params_obey_the_rules(path):
    p = load_params(path)
    for section in SECTIONS:
        assert section_of(p, section).problems() == []


@pytest.mark.parametrize("section, key, values", [("sample", "backend", SAMPLE_BACKENDS),
                                                  ("eval", "backend", EVAL_BACKENDS),
                                                  ("filter", "weighting", WEIGHTINGS)])
def test_every_listed_choice_loads(section, key, values):
    assert values and len(set(values)) == len(values)
    for value in values:
        assert getattr(getattr(params_from_dict({section: {key: value}}), section), key) == value


def test_choices():
    assert (SAMPLE_BACKENDS, EVAL_BACKENDS, WEIGHTINGS) == (("hf", "vllm"), ("hf", "vllm"), ("inverse_n", "uniform"))
    assert PARAMS_FILE == "params.yaml"


def test_param_error_is_the_stages_one_line_error():
    err = param_error("sample.shard_index", "shard 2 of 3 gets none\nof the 2 cases")
    assert isinstance(err, InputError)
    assert str(err) == "params.yaml: field 'sample.shard_index': shard 2 of 3 gets none of the 2 cases"


# --- overrides (a shard from the command line) ----------------------------------------------------------------------

def test_overrides_replace_values_of_the_file(tmp_path):
    text = "sample:\n  num_samples: 4\n  batch_size: 7\n"
    path = write(tmp_path, text)
    p = load_params(path, overrides={"sample": {"shard_index": 1, "num_shards": 2}})
    assert p.sample == dataclasses.replace(SampleParams(), num_samples=4, batch_size=7, shard_index=1, num_shards=2)
    assert path.read_text(encoding="utf-8") == text  # the file itself is left alone
    assert load_params(path, overrides={}) == load_params(path) == load_params(path, overrides={"sample": {}})
    # a section the file leaves out, or leaves empty
    assert load_params(path, overrides={"filter": {"dedup": False}}).filter == FilterParams(dedup=False)
    assert load_params(write(tmp_path, "sample:\n"), overrides={"sample": {"top_p": 0.5}}).sample.top_p == 0.5


@pytest.mark.parametrize("overrides, key, fragment", [
    ({"sample": {"shard_index": 2, "num_shards": 2}}, "sample.shard_index", "must be in [0, num_shards=2), got 2"),
    ({"sample": {"shard_index": 1}}, "sample.shard_index", "must be in [0, num_shards=1), got 1"),
    ({"sample": {"num_shards": 0}}, "sample.num_shards", "must be >= 1, got 0"),
    ({"sample": {"shard_index": "1"}}, "sample.shard_index", "expected int, got str '1'"),
    ({"sample": {"shard_indx": 1}}, "sample.shard_indx", "unknown key (did you mean 'shard_index'?)"),
], ids=["shard_past_the_end", "shard_of_one", "no_shards", "wrong_type", "unknown_key"])
def test_overrides_obey_the_same_rules(tmp_path, overrides, key, fragment):
    path = write(tmp_path, "sample:\n  num_samples: 4\n")
    with pytest.raises(InputError) as exc:
        load_params(path, overrides=overrides)
    assert str(exc.value) == f"{path}: field '{key}': {fragment}"
