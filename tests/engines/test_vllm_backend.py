"""The vLLM backend's request building, LoRA rank and output mapping, tested without vLLM or a GPU.

The output objects below have the attribute layout of vLLM's RequestOutput / CompletionOutput (prompt,
prompt_token_ids, outputs[index, text, token_ids, finish_reason]); the code under test is the mapping itself. The
whole backend runs against a stand-in vLLM in tests/test_vllm_stages.py.
"""

import json
from dataclasses import dataclass, field

import pytest

from lawshift.engines.generation import Completion, GenerationSettings
from lawshift.engines.vllm_backend import load_format, lora_rank, map_outputs, request_kwargs, sampling_kwargs


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"
    index: int = 0


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


@pytest.mark.parametrize("settings,seed,expected", [
    (GenerationSettings(n=8, temperature=0.8, top_p=0.95, max_new_tokens=2048), 7,
     {"n": 8, "temperature": 0.8, "top_p": 0.95, "max_tokens": 2048, "seed": 7}),
    (GenerationSettings(n=3, temperature=0.7, top_p=1.0, max_new_tokens=64), 0,
     {"n": 3, "temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "seed": 0}),
    (GenerationSettings(n=3, temperature=0.0, max_new_tokens=16), 1,
     {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 16, "seed": 1}),
])
def test_sampling_kwargs(settings, seed, expected):
    assert sampling_kwargs(settings, seed) == expected


def test_outputs_map_back_to_their_prompts_in_order():
    settings = GenerationSettings(n=2, temperature=0.8, max_new_tokens=8)
    outs = [RequestOutput("p0", [1, 2, 3], [CompletionOutput("a", [5, 6]), CompletionOutput("b", [7], "length", 1)]),
            # children in completion order, not index order: answer j is child j, whose stream is seed + j
            RequestOutput("p1", [1], [CompletionOutput("d", [2], index=1), CompletionOutput("c", [8, 9, 2])])]
    res = map_outputs(["p0", "p1"], outs, settings)
    assert [r.prompt_tokens for r in res] == [3, 1]
    assert res[0].completions == [Completion("a", 2, True), Completion("b", 1, False)]
    assert [c.text for c in res[1].completions] == ["c", "d"]


def test_greedy_answer_is_repeated_n_times():
    res = map_outputs(["p"], [RequestOutput("p", [1], [CompletionOutput("x", [4])])], GenerationSettings(n=3))
    assert [c.text for c in res[0].completions] == ["x", "x", "x"]


@pytest.mark.parametrize("prompts,outs,match", [
    (["p0", "p1"], [RequestOutput("p0", [1], [CompletionOutput("a", [1])])], "1 outputs for 2 prompts"),
    (["p0", "p1"], [RequestOutput("p1", [1], [CompletionOutput("a", [1])]),
                    RequestOutput("p0", [1], [CompletionOutput("a", [1])])], "another prompt"),
    (["p0"], [RequestOutput("p0", [1], [CompletionOutput("a", [1])])], "1 answers for prompt 0, expected 2"),
])
def test_mismatched_outputs_are_refused(prompts, outs, match):
    with pytest.raises(RuntimeError, match=match):
        map_outputs(prompts, outs, GenerationSettings(n=2, temperature=0.8))


def test_each_prompt_gets_its_own_seed():
    reqs = request_kwargs(GenerationSettings(n=8, temperature=0.8, top_p=0.95, max_new_tokens=32), [100, 7, 65536])
    assert [r["seed"] for r in reqs] == [100, 7, 65536]
    assert all({k: v for k, v in r.items() if k != "seed"} == {k: v for k, v in reqs[0].items() if k != "seed"}
               for r in reqs)


@pytest.mark.parametrize("r,expected", [(1, 1), (4, 8), (8, 8), (16, 16), (33, 64), (64, 64), (300, 320)])
def test_lora_rank_is_the_smallest_vllm_rank_that_holds_the_adapter(tmp_path, r, expected):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r}), encoding="utf-8")
    assert lora_rank(tmp_path) == expected


def test_lora_rank_above_vllms_largest_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1024}), encoding="utf-8")
    with pytest.raises(ValueError, match="rank 1024 is above vLLM's largest, 512"):
        lora_rank(tmp_path)


@pytest.mark.parametrize("allow_pickle,expected", [(False, "safetensors"), (True, "auto")])
def test_allow_pickle_is_the_load_format(allow_pickle, expected):
    assert load_format(allow_pickle) == expected
