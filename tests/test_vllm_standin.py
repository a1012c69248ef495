"""The test-only `vllm` stand-in (tests/vllm_standin) behaves like vLLM on the points the project relies on.

vLLM itself cannot run here (no GPU); the stage tests run the project's vLLM path against this stand-in instead, so
the stand-in must be right where the project depends on vLLM's behaviour: the parallel-sampling seed rule (child j
of a request seeded s draws with s + j), reproducible seeded sampling, greedy = argmax decoding (checked against
transformers' own `generate`), finish reasons and token counts, the prompt fields of an output, vLLM's argument
checks (list lengths, LoRA off, LoRA rank, model length, load_format) and LoRA served as base + adapter (checked
against peft's merged model). Also: the project never imports it.

The stand-in is put on `sys.path` only for this module (the `vllm` fixture) and removed again afterwards, so other
test modules never see a `vllm` package.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, REPO, SAMPLE

STANDIN = REPO / "tests" / "vllm_standin"
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def vllm():
    """The stand-in package, imported from tests/vllm_standin; sys.path and sys.modules restored afterwards."""
    assert importlib.util.find_spec("vllm") is None or "vllm_standin" not in str(importlib.util.find_spec("vllm"))
    saved = {name: mod for name, mod in sys.modules.items() if name == "vllm" or name.startswith("vllm.")}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(STANDIN))
    try:
        module = importlib.import_module("vllm")
        assert Path(module.__file__).resolve().is_relative_to(STANDIN), module.__file__
        yield module
    finally:
        sys.path.remove(str(STANDIN))
        for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.fixture
def log(tmp_path, monkeypatch):
    """Read back the stand-in's JSON-lines log of this test (VLLM_STANDIN_LOG)."""
    path = tmp_path / "vllm_standin.jsonl"
    monkeypatch.setenv("VLLM_STANDIN_LOG", str(path))

    def events(kind: str | None = None) -> list[dict]:
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [r for r in rows if kind is None or r["event"] == kind]

    return events


@pytest.fixture(scope="module")
def llm(vllm, tiny_base):
    import torch

    torch.set_num_threads(1)  # as the `tiny` fixture: the tiny model's matmuls gain nothing from more
    return vllm.LLM(str(tiny_base), seed=0, load_format="safetensors")


@pytest.fixture(scope="module")
def prompts(llm) -> list[str]:
    """Chat-rendered prompts from the first real training cases, as the stages send them (text, not token ids)."""
    cases = json.loads((SAMPLE / "training_set.json").read_text(encoding="utf-8"))[:3]
    tok = llm.get_tokenizer()
    return [tok.apply_chat_template([{"role": "user", "content": c["fact"][:300]}], tokenize=False,
                                    add_generation_prompt=True) for c in cases]


def hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding, cut after the first eos (generate pads finished rows after it)."""
    import torch

    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, top_p=None, top_k=None,
                             temperature=None, pad_token_id=tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return new[:new.index(eos) + 1] if eos in new else new


# ---------------------------------------------------------------------------- no model needed


def test_public_names_and_layout(vllm):
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.outputs import CompletionOutput, RequestOutput
    from vllm.sampling_params import SamplingParams as SP

    assert SP is SamplingParams and vllm.LLM is LLM and vllm.RequestOutput is RequestOutput
    assert vllm.CompletionOutput is CompletionOutput
    lora = LoRARequest("sft", 1, "/some/adapter")  # vLLM's positional order: name, int id, path
    assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == ("sft", 1, "/some/adapter")
    # vLLM 0.33.0's fields, in its order (vllm/lora/request.py)
    assert [f.name for f in dataclasses.fields(LoRARequest)] == [
        "lora_name", "lora_int_id", "lora_path", "base_model_name", "load_inplace", "is_3d_lora_weight"]
    with pytest.raises(ValueError, match="id must be > 0"):
        LoRARequest("x", 0, "/p")
    with pytest.raises(AssertionError, match="lora_path cannot be empty"):
        LoRARequest("x", 1)
    c = CompletionOutput(0, "t", [1, 2], None, None, finish_reason="stop")
    assert (c.index, c.text, c.token_ids, c.cumulative_logprob, c.logprobs, c.finish_reason, c.stop_reason) == \
        (0, "t", [1, 2], None, None, "stop", None) and c.finished()


def test_sampling_params_as_vllm(vllm):
    SamplingParams = vllm.SamplingParams  # noqa: N806
    sp = SamplingParams()
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed, sp.stop) == (1, 1.0, 1.0, 0, 16, None, [])
    greedy = SamplingParams(temperature=0.0, top_p=0.5, top_k=5, seed=3)
    assert (greedy.top_p, greedy.top_k, greedy.seed) == (1.0, 0, 3)  # greedy resets the sampling knobs
    assert SamplingParams(seed=-1).seed is None and SamplingParams(stop="</answer>").stop == ["</answer>"]
    assert SamplingParams(top_k=-1).top_k == -1  # older vLLM's "off", still accepted
    for bad, match in [({"top_p": 0.0}, "top_p"), ({"n": 0}, "n must be at least 1"), ({"max_tokens": 0}, "max_tokens"),
                       ({"temperature": -0.1}, "temperature"), ({"n": 2, "temperature": 0.0}, "greedy")]:
        with pytest.raises(ValueError, match=match):
            SamplingParams(**bad)


@pytest.mark.slow
def test_project_never_imports_the_standin():
    """With the project's own environment, importing every lawshift module leaves `vllm` unimported (vLLM is only
    imported when the vLLM backend is built) and, if found at all, not found in tests/."""
    code = ("import importlib, importlib.util, pkgutil, sys, lawshift\n"
            "for m in pkgutil.iter_modules(lawshift.__path__): importlib.import_module('lawshift.' + m.name)\n"
            "spec = importlib.util.find_spec('vllm')\n"
            "print(json.dumps({'imported': 'vllm' in sys.modules, 'origin': spec and spec.origin}))\n")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["imported"]
    assert "vllm_standin" not in str(result["origin"])
    # and no project file puts it on a path
    for folder in ("lawshift", "stages", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "sys.path" not in text or "vllm_standin" not in text, path


# ---------------------------------------------------------------------------- on the tiny model


def test_child_seed_rule(vllm, llm, prompts, log):
    """n = 3 with seed 10 is three child requests seeded 10, 11, 12 (vllm/v1/engine/parallel_sampling.py); child
    j's answer is the answer of a single request seeded 10 + j."""
    sp = vllm.SamplingParams(n=3, seed=10, temperature=1.0, top_p=0.95, max_tokens=MAX_TOKENS)
    (out,) = llm.generate(prompts[0], sp, use_tqdm=False)
    assert [c.index for c in out.outputs] == [0, 1, 2]
    (event,) = log("generate")
    assert event["prompts"] == 1
    (req,) = event["requests"]
    assert req | {"request_id": None} == {"request_id": None, "seed": 10, "n": 3, "child_seeds": [10, 11, 12],
                                          "temperature": 1.0, "top_p": 0.95, "top_k": 0, "max_tokens": MAX_TOKENS,
                                          "lora_path": None, "prompt": prompts[0],
                                          "prompt_tokens": len(out.prompt_token_ids)}
    singles = llm.generate([prompts[0]] * 3, [vllm.SamplingParams(seed=10 + j, temperature=1.0, top_p=0.95,
                                                                  max_tokens=MAX_TOKENS) for j in range(3)])
    assert [c.token_ids for c in out.outputs] == [o.outputs[0].token_ids for o in singles]
    assert log("generate")[1]["requests"][2]["child_seeds"] == [12]


def test_same_seed_same_text_other_seeds_other_texts(vllm, llm, prompts):
    def texts(seed: int) -> list[str]:
        sp = vllm.SamplingParams(n=2, seed=seed, temperature=1.0, top_p=0.95, max_tokens=MAX_TOKENS)
        return [c.text for c in llm.generate(prompts[1], sp)[0].outputs]

    first = texts(5)
    assert texts(5) == first  # a later call, other requests in between: same answers
    llm.generate(prompts[2], vllm.SamplingParams(temperature=1.0, max_tokens=4))
    assert texts(5) == first
    others = {t for seed in (100, 200, 300) for t in texts(seed)}
    assert len(others | set(first)) >= 4, "different seeds should give different answers"


def test_greedy_equals_hf_generate(vllm, llm, prompts, tiny):
    outs = llm.generate(prompts, vllm.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, seed=1))
    for prompt, out in zip(prompts, outs, strict=True):
        (c,) = out.outputs
        assert c.token_ids == hf_greedy(tiny.model, tiny.tokenizer, prompt, MAX_TOKENS)
        eos = tiny.tokenizer.eos_token_id
        if c.finish_reason == "stop":  # stopped at eos: the eos id kept, its text not
            assert c.token_ids[-1] == eos and len(c.token_ids) <= MAX_TOKENS
        else:
            assert c.finish_reason == "length" and len(c.token_ids) == MAX_TOKENS and eos not in c.token_ids
        assert c.text == tiny.tokenizer.decode(c.token_ids, skip_special_tokens=True).rstrip("\ufffd")
        assert "<|im_end|>" not in c.text and c.stop_reason is None


def test_answers_stop_at_eos(vllm, llm, prompts, tiny):
    """With room to finish, the warm-started model ends answers at eos: finish_reason "stop"."""
    sp = vllm.SamplingParams(n=4, seed=0, temperature=0.7, top_p=0.95, max_tokens=400)
    outs = llm.generate(prompts, sp)
    finished = [c for o in outs for c in o.outputs if c.finish_reason == "stop"]
    assert finished, "no answer reached eos"
    for c in finished:
        assert c.token_ids[-1] == tiny.tokenizer.eos_token_id and c.stop_reason is None
        assert tiny.tokenizer.eos_token_id not in c.token_ids[:-1]


def test_length_cap_and_prompt_fields(vllm, llm, prompts, tiny):
    outs = llm.generate(prompts, vllm.SamplingParams(temperature=1.0, seed=3, max_tokens=3))
    assert len(outs) == len(prompts)
    ids = [int(o.request_id) for o in outs]
    assert ids == list(range(ids[0], ids[0] + len(prompts)))  # vLLM's per-LLM counter, in prompt order
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.prompt == prompt and out.finished is True
        assert out.prompt_token_ids == tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        (c,) = out.outputs
        assert c.finish_reason == "length" and len(c.token_ids) == 3 and c.stop_reason is None


def test_argument_checks(vllm, llm, prompts, log):
    sp = vllm.SamplingParams(max_tokens=4)
    with pytest.raises(ValueError, match="lengths of prompts and params"):
        llm.generate(prompts, [sp] * (len(prompts) - 1))
    with pytest.raises(ValueError, match="LoRA is not enabled"):
        llm.generate(prompts[0], sp, lora_request=vllm.lora.request.LoRARequest("a", 1, "/nowhere"))
    with pytest.raises(ValueError, match="longer than the maximum model length"):
        llm.generate("诈骗 " * 5000, sp)
    with pytest.raises(ValueError, match="cannot be empty"):
        llm.generate("", sp)
    assert log("generate") == []  # refused calls run nothing


def test_construction_log_and_checks(vllm, tiny_base, tmp_path, log):
    vllm.LLM(str(tiny_base), seed=3, load_format="safetensors", max_model_len=1024, enable_prefix_caching=True,
             enforce_eager=True)
    (event,) = log("init")
    assert {k: event[k] for k in ("event", "model", "load_format", "enable_lora", "max_lora_rank", "max_model_len",
                                  "seed", "kwargs")} == \
        {"event": "init", "model": str(tiny_base), "load_format": "safetensors", "enable_lora": False,
         "max_lora_rank": 16, "max_model_len": 1024, "seed": 3, "kwargs": {"enforce_eager": True}}
    with pytest.raises(ValueError, match="greater than the derived max_model_len"):
        vllm.LLM(str(tiny_base), max_model_len=4096)  # the tiny config allows 2048
    with pytest.raises(ValueError, match="max_lora_rank"):
        vllm.LLM(str(tiny_base), enable_lora=True, max_lora_rank=4)  # not one of vLLM's kernel ranks

    # pickle weights only: "safetensors" refuses to load them, "auto" falls back to them
    import torch
    from transformers import AutoModelForCausalLM

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_base, pickled)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(RuntimeError, match="Cannot find any model weights"):
        vllm.LLM(str(pickled), load_format="safetensors")
    loaded = vllm.LLM(str(pickled), load_format="auto")
    assert torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)


def make_adapter(base: Path, out: Path, r: int = 4, seed: int = 0) -> Path:
    """A LoRA adapter on the tiny base that changes its outputs (random A and B, not peft's zero B)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_lora_is_the_merged_adapter(vllm, tiny_base, prompts, tmp_path, log, tiny):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tiny_base, tmp_path / "adapter")
    lora_llm = vllm.LLM(str(tiny_base), enable_lora=True, max_lora_rank=8, load_format="safetensors")
    sp = vllm.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    lora = vllm.lora.request.LoRARequest("sft", 1, str(adapter))
    with_lora = lora_llm.generate(prompts, sp, lora_request=lora)
    base_out = lora_llm.generate(prompts, sp)  # the same engine serves the base unchanged

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32),
                                       str(adapter)).merge_and_unload().eval()
    for prompt, out, base in zip(prompts, with_lora, base_out, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(merged, tiny.tokenizer, prompt, MAX_TOKENS)
        assert base.outputs[0].token_ids == hf_greedy(tiny.model, tiny.tokenizer, prompt, MAX_TOKENS)
        assert out.lora_request is lora and base.lora_request is None
    assert [o.outputs[0].token_ids for o in with_lora] != [o.outputs[0].token_ids for o in base_out]
    first, second = log("generate")
    assert [r["lora_path"] for r in first["requests"]] == [str(adapter)] * len(prompts)
    assert [r["lora_path"] for r in second["requests"]] == [None] * len(prompts)
    # one LoRARequest per prompt, mixed with the base: the same answers as above
    mixed = lora_llm.generate(prompts[:2], sp, lora_request=[lora, None])
    assert [o.outputs[0].token_ids for o in mixed] == [with_lora[0].outputs[0].token_ids,
                                                        base_out[1].outputs[0].token_ids]
    with pytest.raises(ValueError, match="lengths of prompts and lora_request"):
        lora_llm.generate(prompts[:2], sp, lora_request=[lora])


def test_lora_rank_above_max_lora_rank_is_refused(vllm, tiny_base, prompts, tmp_path):
    adapter = make_adapter(tiny_base, tmp_path / "adapter16", r=16)
    small = vllm.LLM(str(tiny_base), enable_lora=True, max_lora_rank=8)
    with pytest.raises(ValueError, match="LoRA rank 16 is greater than max_lora_rank 8"):
        small.generate(prompts[0], vllm.SamplingParams(max_tokens=4),
                       lora_request=vllm.lora.request.LoRARequest("big", 1, str(adapter)))


def test_top_p_top_k_and_draws_follow_vllm(vllm):
    """The sampler on a known distribution: top-p keeps a token when the tokens more likely than it hold < p (the
    most likely always kept), top-k the k most likely; draws follow the kept probabilities."""
    import torch
    from vllm.entrypoints.llm import LLM, _apply_top_k_top_p

    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()
    kept = lambda out: sorted(torch.nonzero(out > float("-inf")).flatten().tolist())  # noqa: E731
    assert kept(_apply_top_k_top_p(logits, None, 0.75)) == [1, 3]  # 0.5 + 0.3 >= 0.75: token 0 (0.15) is out
    assert kept(_apply_top_k_top_p(logits, None, 0.9)) == [0, 1, 3]
    assert kept(_apply_top_k_top_p(logits, None, 0.01)) == [1]
    assert kept(_apply_top_k_top_p(logits, 2, None)) == [1, 3]
    sp = vllm.SamplingParams(temperature=1.0, top_p=0.9)
    generator = torch.Generator().manual_seed(0)
    counts, none = torch.zeros(4), torch.zeros(4, dtype=torch.bool)
    draws = [LLM._sample(logits.clone(), sp, generator, counts, none, 0) for _ in range(4000)]
    freq = torch.bincount(torch.tensor(draws), minlength=4) / len(draws)
    expected = torch.tensor([0.15, 0.5, 0.0, 0.3]) / 0.95
    assert torch.allclose(freq, expected, atol=0.03), freq
    assert LLM._sample(logits.clone(), vllm.SamplingParams(temperature=0.0), generator, counts, none, 0) == 1


def test_stop_strings_and_stop_token_ids(vllm, llm, prompts, tiny):
    """vLLM's other stops: a stop string cuts the text before it (or after it, include_stop_str_in_output) with
    stop_reason the string; a stop token id ends the answer with it in token_ids, its text left out."""
    greedy = llm.generate(prompts[0], vllm.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))[0].outputs[0]
    text, ids = greedy.text, greedy.token_ids
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = llm.generate(prompts[0], vllm.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop=[stop]))
    c = cut[0].outputs[0]
    assert (c.text, c.finish_reason, c.stop_reason) == (text[:text.index(stop)], "stop", stop)
    assert ids[:len(c.token_ids)] == c.token_ids and len(c.token_ids) < len(ids)
    kept = llm.generate(prompts[0], vllm.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop=stop,
                                                        include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == text[:text.index(stop) + len(stop)]

    token = ids[len(ids) // 2]
    at = ids.index(token)
    c = llm.generate(prompts[0], vllm.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                                     stop_token_ids=[token]))[0].outputs[0]
    assert (c.token_ids, c.finish_reason, c.stop_reason) == (ids[:at + 1], "stop", token)
    assert c.text == tiny.tokenizer.decode(ids[:at], skip_special_tokens=True).rstrip("\ufffd")
