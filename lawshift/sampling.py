"""Rejection sampling, first half: N answers per training case from the base policy, saved so nothing is lost.

The `sample` stage (`stages/sample.py`, normally `dvc repro sample`) renders one prompt per training case with the
judge prompt file `sample.prompt`, sends a group of cases to the backend per call (never one case at a time) and
appends one record per case to a JSONL file after every call, flushed and fsynced. A group is `sample.batch_size`
cases with the `hf` backend (one padded batch on the device) and `sample.chunk_size` cases with `vllm` (default
1,024; 0 = the whole shard), which goes to one `LLM.generate` so vLLM's scheduler and prefix cache see the chunk at
once; an interrupted vLLM run loses at most the chunk in flight. Acceptance is decided later by the `filter` stage, so
changing the acceptance rule never reruns this expensive half.

Files
-----
`outputs/samples.jsonl.partial` while running: a journal (lawshift/journal.py) whose header holds the settings
that decide the records (model, data, articles, prompts, sampling params) and whose lines are case records. A rerun
after Ctrl-C or SIGKILL continues it under the journal's rules (other settings: start afresh, saying which changed;
a torn last line: redone; a corrupt line: an error naming it), and skips the cases already recorded, so every case
ends up exactly once. A record for a case this run does not sample, or a case recorded twice, is an error too.

When every case is done the records are written, in training-set order and without the header, to
`outputs/samples.jsonl` (temp file + rename) and the partial file is removed. So `samples.jsonl` only ever holds
a complete run, which is what DVC records (the stage declares it `persist: true` so DVC leaves it in place).

Case record (one JSON object per line of `outputs/samples.jsonl`):

    {"index": 0,                      # position in training_set.json
     "case_id": "…",                  # Case.case_id: sha256 of fact + articles
     "fact": "…", "relevant_articles": ["354-0-0"], "charge": "容留他人吸毒", "prison_time": 7,   # gold labels
     "prompt": "…",                   # the exact rendered chat prompt
     "prompt_tokens": 312, "generated_tokens": 496,
     "answers": [{"text": "<think>…</think><answer> 容留他人吸毒 | 7 </answer>",
                  "num_tokens": 62, "finished": true,                       # stopped at eos
                  "parse": {"verdict": "V", "charge": "容留他人吸毒", "term": 7}}, …]}   # parse_answer; null if none

Every case draws from its own random streams, derived from (`seed`, its index in training_set.json) only
(`lawshift.generation.stream_seed`; answer j uses stream + j, as vLLM seeds its child requests): the answers of a
case do not depend on the batch size, the chunking, the shard it falls in or a resume. Groups form a fixed grid
over the case list, so a resumed run also meets the same batches.

Shards
------
With `num_shards` n > 1 (`python stages/sample.py --shard-index i --num-shards n`, one process per GPU or node)
a run samples cases i, i + n, i + 2n, … into `outputs/samples.shard{i}-of-{n}.jsonl` (resumable as above), each
case with the same streams as in an unsharded run. A shard file keeps the header line,
so `python -m lawshift.merge` (lawshift/merge.py) can check that the shards come from one run before it joins
them into `outputs/samples.jsonl`, which then reads exactly like a single process's.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lawshift import files, models, paths
from lawshift.answers import Answer, parse_answer
from lawshift.codedeps import code_digest
from lawshift.data import ArticleLookup, Case, load_articles, training_cases
from lawshift.files import InputError
from lawshift.generation import Backend, GenerationSettings, PromptResult, call_size, make_backend, stream_seed
from lawshift.journal import Journal, Span
from lawshift.params import Params, SampleParams, param_error
from lawshift.prompts import Prompt, load_prompt, render_prompt
from lawshift.scoring import is_correct

# Settings that change what is generated; device and vLLM memory knobs do not change the records' meaning, nor
# does chunk_size (each case's streams are its own), so a vLLM run may resume with another chunk size.
SAMPLING_KEYS = ("backend", "num_samples", "temperature", "top_p", "max_new_tokens", "batch_size",
                 "shard_index", "num_shards")


def output_path(sp: SampleParams, out: str | Path) -> Path:
    """One shard of a multi-process run writes its own file (joined by `python -m lawshift.merge`)."""
    out = Path(out)
    if sp.num_shards == 1:
        return out
    return out.with_name(f"{out.stem}.shard{sp.shard_index}-of-{sp.num_shards}{out.suffix}")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def shard_indices(n_cases: int, sp: SampleParams) -> list[int]:
    indices = list(range(sp.shard_index, n_cases, sp.num_shards))
    if not indices:
        raise param_error("sample.shard_index", f"shard {sp.shard_index} of {sp.num_shards} gets none of the "
                                                f"{n_cases} cases")
    return indices


def longest_first(indices: Sequence[int], prompts: Sequence[str], lengths: Sequence[int]) -> tuple[list, list]:
    """Process long prompts first: batches of similar length waste less padding, and an out-of-memory batch
    fails in the first minute rather than hours in. The output is still written in training-set order."""
    order = sorted(range(len(indices)), key=lambda k: -lengths[k])
    return [indices[k] for k in order], [prompts[k] for k in order]


def build_prompts(cases: Sequence[Case], indices: Sequence[int], lookup: ArticleLookup, tokenizer,
                  source: str | Path, prompt: Prompt) -> list[str]:
    """The rendered chat prompt of each selected case (missing article ids are counted by `lookup`)."""
    return [render_prompt(tokenizer, prompt.messages(cases[i].fact, lookup.for_case(cases[i], i, source)))
            for i in indices]


# --- fingerprint -------------------------------------------------------------------------------------------------

def run_settings(sp: SampleParams, model: str, training_set: str | Path, articles: str | Path,
                 prompts: Sequence[str], seed: int) -> dict:
    """Everything that decides the records' content, the code that makes them included: the partial journal's
    header."""
    prompts_hash = files.json_digest(list(prompts))
    return {"code": code_digest("sample"), "model": files.model_digest(model),
            "training_set": files.file_digest(training_set),
            "articles": files.file_digest(articles), "prompts": prompts_hash,
            "seed": seed, **{k: getattr(sp, k) for k in SAMPLING_KEYS}}


# --- records and counters ----------------------------------------------------------------------------------------

def parse_dict(text: str) -> dict | None:
    answer = parse_answer(text)
    return None if answer is None else dataclasses.asdict(answer)


def case_record(index: int, case: Case, prompt: str, result: PromptResult) -> dict:
    answers = [{"text": c.text, "num_tokens": c.num_tokens, "finished": c.finished, "parse": parse_dict(c.text)}
               for c in result.completions]
    return {"index": index, "case_id": case.case_id, **case.to_dict(), "prompt": prompt,
            "prompt_tokens": result.prompt_tokens, "generated_tokens": sum(a["num_tokens"] for a in answers),
            "answers": answers}


@dataclass
class Tally:
    """Running totals over case records. `correct` uses the exact rule (tolerance 0): a preview, filter decides."""

    cases: int = 0
    answers: int = 0
    correct: int = 0
    format_errors: int = 0
    unfinished: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def clear(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, 0)

    def add(self, rec: dict, path: str | Path = "", line: int | None = None) -> None:
        try:
            gold = Case(rec["fact"], tuple(rec["relevant_articles"]), rec["charge"], rec["prison_time"])
            parses = [None if a["parse"] is None else Answer(**a["parse"]) for a in rec["answers"]]
            finished = [bool(a["finished"]) for a in rec["answers"]]
            prompt_tokens, generated_tokens = int(rec["prompt_tokens"]), int(rec["generated_tokens"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"malformed case record ({err!r}); delete the file to start afresh",
                             line=line) from None
        self.cases += 1
        self.answers += len(parses)
        self.format_errors += sum(a is None for a in parses)
        self.unfinished += sum(not f for f in finished)
        self.correct += sum(is_correct(a, gold, term_tolerance=0) for a in parses)
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens


# --- the resumable partial file ----------------------------------------------------------------------------------

class PartialFile:
    """The sample journal: which cases are done (and where their lines are), with the running tally."""

    def __init__(self, path: Path, settings: dict, case_ids: dict[int, str], tally: Tally):
        self.path, self.case_ids, self.tally = path, case_ids, tally
        self.done: dict[int, Span] = {}  # case index -> its record's line in the journal
        self.journal = Journal(path, settings, who="sample")
        self.journal.open(self._resume)
        self.resumed = len(self.done)

    def _resume(self, lineno: int, rec: dict, span: Span) -> None:
        index = rec.get("index")
        if index not in self.case_ids or rec.get("case_id") != self.case_ids[index]:
            raise InputError(self.path, "record for a case this run does not sample; delete the file to start "
                                        "afresh", line=lineno, field="case_id")
        if index in self.done:
            raise InputError(self.path, f"case {index} recorded twice; delete the file to start afresh", line=lineno)
        self.tally.add(rec, self.path, lineno)
        self.done[index] = span

    def append(self, records: list[dict]) -> None:
        """One write per batch, then flush and fsync: once this returns the batch survives a kill or power loss."""
        for rec, span in zip(records, self.journal.append(records), strict=True):
            self.done[rec["index"]] = span

    def close(self) -> None:
        self.journal.close()

    def finalize(self, out: Path, order: Sequence[int], keep_header: bool = False) -> Tally:
        """Write the records in `order` to `out` atomically, the header line first only if `keep_header` (a
        shard's file: the merge checks it); remove the partial file."""
        tally = Tally()
        self.journal.copy_to(out, [self.done[i] for i in order], keep_header, each=lambda raw: tally.add(
            json.loads(raw), self.path))
        self.journal.remove()
        return tally


# --- the sampling loop -------------------------------------------------------------------------------------------

@dataclass
class Job:
    cases: Sequence[Case]  # the whole training set: record indices refer to it
    indices: list[int]  # the cases this run samples (all of them, or one shard), in processing order
    prompts: list[str]  # rendered prompt of each selected case
    settings: dict  # run_settings(...)
    seed: int  # the run's seed (params `seed`): each case's streams derive from it and the case's index


@dataclass
class RunStats:
    tally: Tally
    resumed_cases: int
    new_tokens: int
    generate_seconds: float


def sample(job: Job, backend: Backend, sp: SampleParams, out: Path) -> RunStats:
    """Generate every case of `job` not yet in the partial file, then write `out`. Ctrl-C keeps what is done."""
    tally = Tally()
    partial = PartialFile(partial_path(out), job.settings, {i: job.cases[i].case_id for i in job.indices}, tally)
    gen = GenerationSettings(sp.num_samples, sp.temperature, sp.top_p, sp.max_new_tokens)
    new_tokens, seconds = 0, 0.0
    bar = tqdm(total=len(job.indices), initial=partial.resumed, unit="case", desc="sample", dynamic_ncols=True)
    bar.set_postfix(accepted=tally.correct)
    size = call_size(sp.backend, sp.batch_size, sp.chunk_size, len(job.indices))
    try:
        # A fixed grid of groups over the selected cases: a resumed run meets the same boundaries.
        for start in range(0, len(job.indices), size):
            todo = [k for k in range(start, min(start + size, len(job.indices))) if job.indices[k] not in partial.done]
            if not todo:
                continue
            t0 = time.perf_counter()
            results = backend.generate([job.prompts[k] for k in todo], gen,
                                       [stream_seed(job.seed, job.indices[k]) for k in todo])
            seconds += time.perf_counter() - t0
            records = [case_record(job.indices[k], job.cases[job.indices[k]], job.prompts[k], r)
                       for k, r in zip(todo, results, strict=True)]
            partial.append(records)
            for rec in records:
                tally.add(rec)
                new_tokens += rec["generated_tokens"]
            bar.update(len(records))
            bar.set_postfix(accepted=tally.correct, tok_s=f"{new_tokens / max(seconds, 1e-9):.0f}")
    except KeyboardInterrupt:
        bar.close()
        partial.close()
        print(f"\nsample: interrupted; {tally.cases} of {len(job.indices)} cases are saved in {partial.path}. "
              "Rerun to continue.", file=sys.stderr)
        raise SystemExit(130) from None
    bar.close()
    tally = partial.finalize(out, sorted(job.indices), keep_header=sp.num_shards > 1)
    return RunStats(tally, partial.resumed, new_tokens, seconds)


def metrics(stats: RunStats, missing_articles: int) -> dict:
    """The stage's results: counts that depend only on the inputs and settings, never on the machine."""
    t = stats.tally
    return {"cases": t.cases, "answers_generated": t.answers, "generated_tokens": t.generated_tokens,
            "prompt_tokens": t.prompt_tokens, "missing_articles": missing_articles, "correct_exact": t.correct,
            "format_errors": t.format_errors, "unfinished_answers": t.unfinished}


def run_info(stats: RunStats, backend: str, device: str) -> dict:
    """How this run went (its time file): throughput of this run's generate calls only (model loading and
    resumed cases are not in it), backend, device and resumed cases."""
    tok_s = round(stats.new_tokens / stats.generate_seconds, 1) if stats.generate_seconds else None
    return {"tokens_per_second": tok_s, "backend": backend, "device": device, "resumed_cases": stats.resumed_cases}


def run(p: Params) -> tuple[dict, dict]:
    """The sample stage: every case of this shard (all cases when unsharded) sampled into its output file.
    Returns (metrics, run info)."""
    sp = p.sample
    base = models.resolve_base(paths.BASE)
    tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)
    train_file = Path(p.data.root) / "training_set.json"
    cases = training_cases(p.data.root)
    lookup = ArticleLookup(load_articles(p.data.train_articles), p.data.train_articles, p.data.strict_articles)
    indices = shard_indices(len(cases), sp)
    prompts = build_prompts(cases, indices, lookup, tokenizer, train_file, load_prompt(sp.prompt))
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    needed = max(lengths) + sp.max_new_tokens
    # Before loading the weights: the longest prompt plus a full answer must fit the model's context.
    models.check_context(models.load_config(base, p.model.trust_remote_code), needed, "sample.max_new_tokens")
    # models/base itself, not the folder it points to: for a hub model its pointer holds every file's sha256,
    # already checked by resolve_base, so the weights are not hashed a second time.
    settings = run_settings(sp, paths.BASE, train_file, p.data.train_articles, prompts, p.seed)
    indices, prompts = longest_first(indices, prompts, lengths)
    backend = make_backend(sp.backend, base, device=sp.device, seed=p.seed, max_model_len=needed,
                                  trust_remote_code=p.model.trust_remote_code, allow_pickle=p.model.allow_pickle,
                                  tensor_parallel_size=sp.tensor_parallel_size,
                                  gpu_memory_utilization=sp.gpu_memory_utilization)
    stats = sample(Job(cases, indices, prompts, settings, p.seed), backend, sp, output_path(sp, paths.SAMPLES))
    return metrics(stats, lookup.missing), run_info(stats, backend.name, str(backend.device))
