"""Tests for benchmarks/ (`python -m benchmarks sampling|train`): the command line, the forward-pass timer, the
long-prompt and mixed-lengths variants, the metrics file, and small `sampling` and `train` runs end to end on the
tiny model that write benchmarks/results.json. Runs of a benchmark, a training loop or a subprocess are marked slow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import JUDGE, R1, REPO, SAMPLE, read_json, seeds

from benchmarks import common, sampling, train
from benchmarks.__main__ import main, parser
from lawshift.core import files, models
from lawshift.core.files import InputError
from lawshift.core.params import TrainParams
from lawshift.engines.generation import GenerationSettings
from lawshift.engines.hf_backend import HFBackend
from lawshift.task.data import ArticleLookup, load_articles, training_cases
from lawshift.task.prompts import render_prompt

# the real sample's articles (conftest's ARTICLES is the small project's relative copy of them)
SAMPLE_ARTICLES = SAMPLE / "criminal_law_articles.json"
CPU = torch.device("cpu")
SEED = 7  # the small benchmark projects' top-level `seed` (not the default 0: the recorded settings must show it)
# small LoRA training on the tiny model (the params of the train runs below)
TINY_TRAIN = {"load_in_4bit": False, "gradient_checkpointing": False, "lora_r": 4, "lora_alpha": 8,
              "lora_target_modules": ["q_proj", "v_proj"], "num_train_epochs": 1, "per_device_train_batch_size": 2,
              "gradient_accumulation_steps": 1, "warmup_steps": 0, "logging_steps": 4, "max_length": 1024,
              "device": "cpu"}


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---- the command line: python -m benchmarks sampling|train ----------------------------------------------------

def test_one_command_with_each_benchmarks_options_and_defaults():
    ap = parser()
    assert ap.prog == "python -m benchmarks"
    s = ap.parse_args(["sampling"])
    assert (s.run, s.show) == (sampling.sampling_bench, sampling.print_sampling)
    assert (s.cases, s.n, s.max_new_tokens, s.batch_size) == (None, None, None, None)
    assert (s.long_prompt_tokens, s.short_answer_tokens, s.threads) == (1100, 64, 1)
    assert (s.params, s.out) == ("params.yaml", Path("benchmarks/results.json"))
    t = ap.parse_args(["train", "--epochs", "2", "--no-warm-up"])
    assert (t.run, t.show) == (train.train_bench, train.print_train)
    assert (t.epochs, t.max_steps, t.sft, t.mixed_prompt_tokens, t.warm_up) == (
        2.0, None, Path(R1["sft"]), 800, False)
    assert (t.threads, t.params, t.out) == (1, "params.yaml", Path("benchmarks/results.json"))
    with pytest.raises(SystemExit):
        ap.parse_args([])  # a benchmark must be named


def test_threads_below_one_are_an_input_error():
    with pytest.raises(InputError, match="--threads: must be >= 1, got 0"):
        common.set_threads(0)


@pytest.mark.slow
def test_python_m_benchmarks_runs_from_the_repo_root():
    # bad input, caught before any model loads: one line on stderr and exit status 2 (files.run_stage)
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "sampling", "--threads", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1] == "error: --threads: must be >= 1, got 0"
    assert bad.stdout == ""


@pytest.mark.parametrize("shared_prefill", [True, False])
def test_forward_timer_splits_prefill_and_decode(tiny, shared_prefill):
    model, tokenizer = tiny.model, tiny.tokenizer
    prompts = ["<|im_start|>user\n被告人甲盗窃。<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\n甲"]
    longest = max(n_tokens(tokenizer, p) for p in prompts)
    backend = HFBackend(model, tokenizer, CPU, shared_prefill=shared_prefill)
    settings = GenerationSettings(n=3, temperature=0.0, max_new_tokens=6)  # greedy: one answer per prompt
    with sampling.forward_timer(model, CPU) as times:
        results = backend.generate(prompts, settings, seeds(prompts, 0))
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
    times = sampling.ForwardTimes(prefill_seconds=1.0, decode_seconds=2.5, prefill_calls=1, prefill_tokens=300)
    r = sampling.method_result(tokens=800, seconds=4.0, times=times)
    assert r["tokens_per_second"] == 200.0 and r["other_seconds"] == 0.5 and r["prefill_share"] == 0.25


def test_long_prompt_adds_the_following_articles(tiny):
    tokenizer = tiny.tokenizer
    case = training_cases(SAMPLE)[0]
    articles = load_articles(SAMPLE_ARTICLES)
    own = ArticleLookup(articles, str(SAMPLE_ARTICLES)).for_case(case)
    real = render_prompt(tokenizer, JUDGE.messages(case.fact, own))
    assert common.long_prompt(tokenizer, JUDGE, case, articles, own, target=10) == real  # long enough already
    target = n_tokens(tokenizer, real) + 600
    long = common.long_prompt(tokenizer, JUDGE, case, articles, own, target)
    assert target <= n_tokens(tokenizer, long) < target + 600
    ids = list(articles)
    after = ids[ids.index(own[0][0]) + 1]
    assert real.split("\n\n案件事实")[0] in long  # the case's own articles come first, then the next ones
    assert f"【{after}】{articles[after]}" in long and long.endswith(real[real.index("\n\n案件事实"):])


@pytest.fixture
def bench_project(project) -> Path:
    """The shared small project (the working directory) with 3 training cases, short answers and the tiny LoRA
    training params; torch's thread count is restored afterwards (the bench sets the process's)."""
    root = project(n_train=3, params={
        "seed": SEED, "sample": {"num_samples": 2, "max_new_tokens": 12, "batch_size": 2, "device": "cpu"},
        "train": {**TINY_TRAIN, "lora_target_modules": list(TINY_TRAIN["lora_target_modules"])}})
    threads = torch.get_num_threads()
    yield root
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_sampling_bench_writes_its_entry_and_keeps_the_others(bench_project, capsys):
    project = bench_project
    files.write_json(project / "benchmarks" / "results.json", {"train": {"kept": True}})
    main(["sampling", "--n", "3", "--long-prompt-tokens", "400", "--short-answer-tokens", "6", "--threads", "1"])
    out = read_json(project / "benchmarks" / "results.json")
    assert out["train"] == {"kept": True}
    result = out["sampling"]
    assert result["command"] == ("python -m benchmarks sampling --n 3 --long-prompt-tokens 400 "
                                 "--short-answer-tokens 6 --threads 1")
    s = result["settings"]
    assert (s["cases"], s["num_samples"], s["max_new_tokens"], s["batch_size"], s["torch_threads"]) == (3, 3, 12, 2, 1)
    assert (s["seed"], s["device"], s["model"]) == (SEED, "cpu", "models/base")  # the top-level `seed` param
    runs = result["runs"]
    assert {name: run["max_new_tokens"] for name, run in runs.items()} == {
        "real_prompt": 12, "long_prompt": 12, "long_prompt_short_answers": 6}
    assert runs["long_prompt"]["prompt_tokens_mean"] >= 400 > runs["real_prompt"]["prompt_tokens_max"]
    for run in runs.values():
        methods = run["methods"]
        assert set(methods) == set(sampling.METHODS) and set(run["speedup_vs_per_case"]) == set(sampling.METHODS[1:])
        per_case, batched, sampler = (methods[m] for m in sampling.METHODS)
        for m in methods.values():
            assert 0 < m["generated_tokens"] <= 3 * 3 * run["max_new_tokens"] and m["tokens_per_second"] > 0
            assert m["seconds"] >= m["prefill_seconds"] + m["decode_seconds"] - 1e-3
        # the per-case loop prefills every prompt once per answer, the sampler once
        assert per_case["prefill_calls"] == 3 and batched["prefill_calls"] == 2
        assert per_case["prefill_tokens"] == pytest.approx(3 * 3 * run["prompt_tokens_mean"], abs=0.5)
        assert per_case["prefill_tokens"] == 3 * sampler["prefill_tokens"]
        assert batched["prefill_tokens"] >= per_case["prefill_tokens"]  # n copies of padded batches
    printed = capsys.readouterr().out
    assert "sampler" in printed and "tok/s" in printed and "wrote benchmarks/results.json" in printed


def test_bench_file_that_is_not_an_object_is_an_input_error(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(InputError, match="bench.json: must be a JSON object"):
        common.write_entry(path, "sampling", {})


# ---- train: random vs length-grouped micro-batches -------------------------------------------------------------

def varied_sft(tokenizer, path: Path, reasons: list[int]) -> Path:
    """sft.jsonl with answers to the first training case whose reasoning has reasons[k] sentences: lengths as
    different as the list makes them."""
    case = training_cases(SAMPLE)[0]
    arts = ArticleLookup(load_articles(SAMPLE_ARTICLES), str(SAMPLE_ARTICLES)).for_case(case)
    prompt = render_prompt(tokenizer, JUDGE.messages(case.fact, arts))
    answer = f"<answer>{case.charge} | {case.prison_time}</answer>"
    records = [{**case.to_dict(), "case_id": case.case_id, "prompt": prompt, "weight": 1 / len(reasons),
                "response": f"<think>{'依据法条。' * r}</think>{answer}", "num_correct_for_this_sample": len(reasons)}
               for r in reasons]
    files.write_jsonl(path, records)
    return path


@pytest.mark.slow
def test_grouped_training_pads_less_and_trains_the_same_tokens(tiny, tmp_path):
    tokenizer = tiny.tokenizer
    sft = varied_sft(tokenizer, tmp_path / "sft.jsonl", [0, 150] * 8)  # short and long answers, alternating
    tp = TrainParams(**TINY_TRAIN)
    # seed: train_sft's required keyword (through compare_grouping's **load until it takes one of its own)
    result = train.compare_grouping(str(tiny.path), sft, tp, warm_up=False, seed=0)
    rnd, grp = (result["runs"][name] for name in train.GROUPING)
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


def test_mixed_lengths_lengthen_every_other_prompt(tiny, tmp_path):
    tokenizer = tiny.tokenizer
    src = varied_sft(tokenizer, tmp_path / "sft.jsonl", [0, 1, 2, 3])
    dst = train.mixed_length_sft(src, tmp_path / "mixed.jsonl", tokenizer, JUDGE, str(SAMPLE_ARTICLES), target=500)
    before, after = [r for _, r in files.read_jsonl(src)], [r for _, r in files.read_jsonl(dst)]
    assert [r["response"] for r in after] == [r["response"] for r in before]
    assert after[0] == before[0] and after[2] == before[2]  # even records unchanged
    for k in (1, 3):
        assert n_tokens(tokenizer, before[k]["prompt"]) < 500 <= n_tokens(tokenizer, after[k]["prompt"])
        assert after[k] == {**before[k], "prompt": after[k]["prompt"]}
    bad = tmp_path / "bad.jsonl"
    files.write_jsonl(bad, [before[0], {"prompt": "p", "response": "r"}])
    with pytest.raises(InputError, match="bad.jsonl.*record needs fact, relevant_articles, charge and prison_time"):
        train.mixed_length_sft(bad, tmp_path / "out.jsonl", tokenizer, JUDGE, str(SAMPLE_ARTICLES), target=500)


@pytest.mark.slow
def test_train_bench_writes_its_entry_and_keeps_the_others(bench_project, capsys):
    project = bench_project
    tokenizer = models.load_tokenizer(str(project / "models" / "base"))
    sft = varied_sft(tokenizer, project / R1["sft"], [0, 40, 0, 40])
    files.write_json(project / "benchmarks" / "results.json", {"sampling": {"kept": True}})
    main(["train", "--max-steps", "2", "--mixed-prompt-tokens", "500", "--no-warm-up", "--threads", "1"])
    out = read_json(project / "benchmarks" / "results.json")
    assert out["sampling"] == {"kept": True}
    result = out["train"]
    assert result["command"] == ("python -m benchmarks train --max-steps 2 --mixed-prompt-tokens 500 --no-warm-up "
                                 "--threads 1")
    s = result["settings"]
    assert (s["data"], s["max_steps"], s["per_device_train_batch_size"], s["torch_threads"]) == (
        R1["sft"], 2, 2, 1)
    assert (s["load_in_4bit"], s["mixed_prompt_tokens"], s["device"]) == (False, 500, "cpu")
    assert (s["seed"], s["gradient_checkpointing"], s["model"]) == (SEED, False, "models/base")  # top-level `seed`
    assert set(result["variants"]) == {"real", "mixed_lengths"}
    for v in result["variants"].values():
        assert set(v["runs"]) == set(train.GROUPING)
        for r in v["runs"].values():
            assert r["steps"] == r["micro_batches"] == 2 and r["padded_tokens"] >= r["trained_tokens"] > 0
        rnd, grp = v["runs"]["random"], v["runs"]["group_by_length"]
        assert v["padded_tokens_saved"] == rnd["padded_tokens"] - grp["padded_tokens"]
    mixed, real = (result["variants"][k]["runs"]["random"]["trained_tokens"] for k in ("mixed_lengths", "real"))
    assert mixed > real  # longer prompts, same answers
    assert sft.is_file() and not (project / "checkpoints").exists() and not (project / "dvclive").exists()
    printed = capsys.readouterr().out
    assert "real data" in printed and "mixed_lengths data" in printed and "group_by_length / random" in printed
    assert "wrote benchmarks/results.json" in printed
