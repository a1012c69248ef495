"""Tests for lawshift.bench: the forward-pass timer, the long-prompt variant, and a small `sampling` run end to end
on the tiny model that writes metrics/bench.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lawshift import bench, files, models
from lawshift.data import ArticleLookup, load_articles, training_cases
from lawshift.files import InputError
from lawshift.generation import GenerationSettings, HFBackend
from lawshift.params import TrainParams
from lawshift.prompts import build_messages, render_prompt

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lawshift-sample"
ARTICLES = SAMPLE / "criminal_law_articles.json"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_base):
    return models.load_model(str(tiny_base), device=CPU), models.load_tokenizer(str(tiny_base))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("shared_prefill", [True, False])
def test_forward_timer_splits_prefill_and_decode(tiny, shared_prefill):
    model, tokenizer = tiny
    prompts = ["<|im_start|>user\n被告人甲盗窃。<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\n甲"]
    longest = max(n_tokens(tokenizer, p) for p in prompts)
    backend = HFBackend(model, tokenizer, CPU, shared_prefill=shared_prefill)
    settings = GenerationSettings(n=3, temperature=0.0, max_new_tokens=6)  # greedy: one answer per prompt
    with bench.forward_timer(model, CPU) as times:
        results = backend.generate(prompts, settings, seed=0)
    if shared_prefill:  # each prompt once, unpadded
        assert times.prefill_calls == 2 and times.prefill_tokens == sum(r.prompt_tokens for r in results)
    else:  # the padded batch, once
        assert times.prefill_calls == 1 and times.prefill_tokens == 2 * longest
    steps = max(c.num_tokens for r in results for c in r.completions) - 1  # the first token comes from the prefill
    assert times.decode_calls == steps and 0 < times.decode_rows <= 2 * steps
    assert times.prefill_seconds > 0 and times.decode_seconds > 0
    calls = times.prefill_calls
    with torch.inference_mode():
        model(input_ids=torch.ones((1, 4), dtype=torch.long))
    assert times.prefill_calls == calls  # the hooks are gone after the block


def test_method_result_accounts_for_all_the_time():
    times = bench.ForwardTimes(prefill_seconds=1.0, decode_seconds=2.5, prefill_calls=1, prefill_tokens=300)
    r = bench.method_result(tokens=800, seconds=4.0, times=times)
    assert r["tokens_per_second"] == 200.0 and r["other_seconds"] == 0.5 and r["prefill_share"] == 0.25


def test_long_prompt_adds_the_following_articles(tiny):
    _, tokenizer = tiny
    case = training_cases(SAMPLE)[0]
    articles = load_articles(ARTICLES)
    own = ArticleLookup(articles, str(ARTICLES)).for_case(case)
    real = render_prompt(tokenizer, build_messages(case.fact, own))
    assert bench.long_prompt(tokenizer, case, articles, own, target=10) == real  # long enough already
    target = n_tokens(tokenizer, real) + 600
    long = bench.long_prompt(tokenizer, case, articles, own, target)
    assert target <= n_tokens(tokenizer, long) < target + 600
    ids = list(articles)
    after = ids[ids.index(own[0][0]) + 1]
    assert real.split("\n\n案件事实")[0] in long  # the case's own articles come first, then the next ones
    assert f"【{after}】{articles[after]}" in long and long.endswith(real[real.index("\n\n案件事实"):])


@pytest.fixture
def project(tmp_path, tiny_base, monkeypatch) -> Path:
    data = tmp_path / "data" / "small"
    data.mkdir(parents=True)
    shutil.copy(ARTICLES, data)
    train = json.loads((SAMPLE / "training_set.json").read_text(encoding="utf-8"))[:3]
    (data / "training_set.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    shutil.copytree(tiny_base, tmp_path / "models" / "base")
    params = {"data": {"root": "data/small", "train_articles": "data/small/criminal_law_articles.json"},
              "sample": {"num_samples": 2, "max_new_tokens": 12, "batch_size": 2, "device": "cpu"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)  # the bench sets the process's thread count


def test_sampling_bench_writes_its_entry_and_keeps_the_others(project, capsys):
    files.write_json(project / "metrics" / "bench.json", {"train": {"kept": True}})
    bench.main(["sampling", "--n", "3", "--long-prompt-tokens", "400", "--short-answer-tokens", "6", "--threads", "1"])
    out = json.loads((project / "metrics" / "bench.json").read_text(encoding="utf-8"))
    assert out["train"] == {"kept": True}
    result = out["sampling"]
    assert result["command"] == ("python -m lawshift.bench sampling --n 3 --long-prompt-tokens 400 "
                                 "--short-answer-tokens 6 --threads 1")
    s = result["settings"]
    assert (s["cases"], s["num_samples"], s["max_new_tokens"], s["batch_size"], s["torch_threads"]) == (3, 3, 12, 2, 1)
    runs = result["runs"]
    assert {name: run["max_new_tokens"] for name, run in runs.items()} == {
        "real_prompt": 12, "long_prompt": 12, "long_prompt_short_answers": 6}
    assert runs["long_prompt"]["prompt_tokens_mean"] >= 400 > runs["real_prompt"]["prompt_tokens_max"]
    for run in runs.values():
        methods = run["methods"]
        assert set(methods) == set(bench.METHODS) and set(run["speedup_vs_per_case"]) == set(bench.METHODS[1:])
        per_case, batched, sampler = (methods[m] for m in bench.METHODS)
        for m in methods.values():
            assert 0 < m["generated_tokens"] <= 3 * 3 * run["max_new_tokens"] and m["tokens_per_second"] > 0
            assert m["seconds"] >= m["prefill_seconds"] + m["decode_seconds"] - 1e-3
        # the per-case loop prefills every prompt once per answer, the sampler once
        assert per_case["prefill_calls"] == 3 and batched["prefill_calls"] == 2
        assert per_case["prefill_tokens"] == pytest.approx(3 * 3 * run["prompt_tokens_mean"], abs=0.5)
        assert per_case["prefill_tokens"] == 3 * sampler["prefill_tokens"]
        assert batched["prefill_tokens"] >= per_case["prefill_tokens"]  # n copies of padded batches
    printed = capsys.readouterr().out
    assert "sampler" in printed and "tok/s" in printed and "wrote metrics/bench.json" in printed


def test_bench_file_that_is_not_an_object_is_an_input_error(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(InputError, match="bench.json: must be a JSON object"):
        bench.write_entry(path, "sampling", {})


# ---- train: random vs length-grouped micro-batches -------------------------------------------------------------

def varied_sft(tokenizer, path: Path, reasons: list[int]) -> Path:
    """sft.jsonl with answers to the first training case whose reasoning has reasons[k] sentences: lengths as
    different as the list makes them."""
    case = training_cases(SAMPLE)[0]
    arts = ArticleLookup(load_articles(ARTICLES), str(ARTICLES)).for_case(case)
    prompt = render_prompt(tokenizer, build_messages(case.fact, arts))
    answer = f"<answer>{case.charge} | {case.prison_time}</answer>"
    records = [{**case.to_dict(), "case_id": case.case_id, "prompt": prompt, "weight": 1 / len(reasons),
                "response": f"<think>{'依据法条。' * r}</think>{answer}", "num_correct_for_this_sample": len(reasons)}
               for r in reasons]
    files.write_jsonl(path, records)
    return path


def test_grouped_training_pads_less_and_trains_the_same_tokens(tiny, tiny_base, tmp_path):
    _, tokenizer = tiny
    sft = varied_sft(tokenizer, tmp_path / "sft.jsonl", [0, 150] * 8)  # short and long answers, alternating
    tp = TrainParams(load_in_4bit=False, gradient_checkpointing=False, lora_r=4, lora_alpha=8,
                     lora_target_modules=["q_proj", "v_proj"], num_train_epochs=1, per_device_train_batch_size=2,
                     gradient_accumulation_steps=1, warmup_steps=0, logging_steps=4, max_length=1024, device="cpu",
                     seed=0)
    result = bench.compare_grouping(str(tiny_base), sft, tp, warm_up=False)
    rnd, grp = (result["runs"][name] for name in bench.GROUPING)
    lengths = [len(tokenizer(r["prompt"] + r["response"], add_special_tokens=False)["input_ids"]) + 1
               for _, r in files.read_jsonl(sft)]  # + <|im_end|>
    for r in (rnd, grp):
        assert r["trained_tokens"] == sum(lengths) and r["micro_batches"] == 8 and r["steps"] == 8
        assert r["padding_share"] == pytest.approx(1 - r["trained_tokens"] / r["padded_tokens"], abs=1e-4)
        assert r["trained_tokens_per_second"] == pytest.approx(r["trained_tokens"] / r["seconds"], rel=0.01)
        assert r["padded_tokens_per_second"] >= r["trained_tokens_per_second"] > 0
    assert grp["padding_share"] < rnd["padding_share"]  # sorted 4-answer mega-batches pair short with short
    assert result["padded_tokens_saved"] == rnd["padded_tokens"] - grp["padded_tokens"] > 0
    assert not list(tmp_path.glob("**/checkpoint-*")) and set(p.name for p in tmp_path.iterdir()) == {"sft.jsonl"}
