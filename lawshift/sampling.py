"""Rejection sampling, first half: N answers per training case from a round's policy, saved so nothing is lost.

The `sample@<round>` stage (`stages/sample.py <round>`, normally `dvc repro sample@round1`) samples from the base
(round1) or the base plus the previous round's adapter, into `outputs/<round>/samples.jsonl`. It renders one prompt
per training case with the
judge prompt file `sample.prompt`, sends a group of cases to the backend per call (never one case at a time) and
appends one record per case to a JSONL file after every call, flushed and fsynced. A group is `sample.batch_size`
cases with the `hf` backend (one padded batch on the device) and `sample.chunk_size` cases with `vllm` (default
1,024; 0 = the whole shard), which goes to one `LLM.generate` so vLLM's scheduler and prefix cache see the chunk at
once; an interrupted vLLM run loses at most the chunk in flight. Acceptance is decided later by the `filter` stage, so
changing the acceptance rule never reruns this expensive half.

Difficulty-aware resampling (`sample.min_accepted` > 0): once every case has its first `num_samples` draws, a case
with fewer than `min_accepted` accepted answers (finished and exactly right: the filter's default rule) draws
`num_samples` more, and again, until it has enough or `max_samples` draws. Each further group is journaled like the
first draws, as a line `{"index", "case_id", "first": j, "answers": [...], "generated_tokens"}` holding draws j, j+1,
...; the final record has them appended in draw order, and `first_draws` says where the first N end. Draw j of case i
uses stream `stream_seed + j` whatever group it falls in, so the extra draws never repeat a stream either.

Files
-----
`outputs/<round>/samples.jsonl.partial` while running: a journal (lawshift/journal.py) whose header holds the settings
that decide the records (model, data, articles, prompts, sampling params) and whose lines are case records. A rerun
after Ctrl-C or SIGKILL continues it under the journal's rules (other settings: start afresh, saying which changed;
a torn last line: redone; a corrupt line: an error naming it), and skips the cases already recorded, so every case
ends up exactly once. A record for a case this run does not sample, or a case recorded twice, is an error too.

When every case is done the records are written, in training-set order and without the header, to
`outputs/<round>/samples.jsonl` (temp file + rename) and the partial file is removed. So `samples.jsonl` only ever holds
a complete run, which is what DVC records (the stage declares it `persist: true` so DVC leaves it in place).

Case record (one JSON object per line of `outputs/<round>/samples.jsonl`):

    {"index": 0,                      # position in training_set.json
     "case_id": "…",                  # Case.case_id: sha256 of fact + articles
     "fact": "…", "relevant_articles": ["354-0-0"], "charge": "容留他人吸毒", "prison_time": 7,   # gold labels
     "prompt": "…",                   # the exact rendered chat prompt
     "prompt_tokens": 312, "generated_tokens": 496,   # generated: all draws, further ones included
     "first_draws": 8,                # answers[:8] are the first draws, the rest resampling's
     "answers": [{"text": "<think>…</think><answer> 容留他人吸毒 | 7 </answer>",
                  "num_tokens": 62, "finished": true,                       # stopped at eos
                  "parse": {"verdict": "V", "charge": "容留他人吸毒", "term": 7}}, …]}   # parse_answer; null if none

Every case draws from its own random streams, derived from (`seed`, its index in training_set.json) only
(`lawshift.generation.stream_seed`, a later round with streams of its own; answer j uses stream + j, as vLLM
seeds its child requests): a case's streams do not depend on the batch size, the chunking, the shard it falls in or
a resume, and on the `hf` backend on CPU neither do its answers' bytes (tested); on a GPU they can differ in the
last bits of the logits unless vLLM's batch-invariant mode is on (lawshift/generation.py). Groups form a fixed grid
over the case list, so a resumed run also meets the same batches.

Shards
------
With `num_shards` n > 1 (`python stages/sample.py --shard-index i --num-shards n`, one process per GPU or node)
a run samples cases i, i + n, i + 2n, … into `outputs/<round>/samples.shard{i}-of-{n}.jsonl` (resumable as above), each
case with the same streams as in an unsharded run. A shard file keeps the header line,
so `python -m lawshift.merge` (lawshift/merge.py) can check that the shards come from one run before it joins
them into the round's `samples.jsonl`, which then reads exactly like a single process's.
"""

from __future__ import annotations

import dataclasses
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
                 "shard_index", "num_shards", "min_accepted", "max_samples", "batch_invariant")


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
                 prompts: Sequence[str], seed: int, adapter: str | None = None, family: str = "") -> dict:
    """Everything that decides the records' content, the code that makes them included: the partial journal's
    header."""
    prompts_hash = files.json_digest(list(prompts))
    return {"code": code_digest("sample"), "model": files.model_digest(model),
            "adapter": adapter and files.model_digest(adapter), "streams": family,
            "training_set": files.file_digest(training_set),
            "articles": files.file_digest(articles), "prompts": prompts_hash,
            "seed": seed, **{k: getattr(sp, k) for k in SAMPLING_KEYS}}


# --- records and counters ----------------------------------------------------------------------------------------

def parse_dict(text: str) -> dict | None:
    answer = parse_answer(text)
    return None if answer is None else dataclasses.asdict(answer)


def answer_dicts(result: PromptResult) -> list[dict]:
    return [{"text": c.text, "num_tokens": c.num_tokens, "finished": c.finished, "parse": parse_dict(c.text)}
            for c in result.completions]


def case_record(index: int, case: Case, prompt: str, result: PromptResult) -> dict:
    answers = answer_dicts(result)
    return {"index": index, "case_id": case.case_id, **case.to_dict(), "prompt": prompt,
            "prompt_tokens": result.prompt_tokens, "generated_tokens": sum(a["num_tokens"] for a in answers),
            "first_draws": len(answers), "answers": answers}


def extra_record(index: int, case: Case, first: int, result: PromptResult) -> dict:
    """A journal line of further draws for a case already recorded: its answers `first`, `first` + 1, ..."""
    answers = answer_dicts(result)
    return {"index": index, "case_id": case.case_id, "first": first,
            "generated_tokens": sum(a["num_tokens"] for a in answers), "answers": answers}


def merge_extras(rec: dict, extras: Sequence[dict]) -> dict:
    """A case record with its further draws appended, in draw order: the record samples.jsonl keeps."""
    out = dict(rec)
    for ext in sorted(extras, key=lambda e: e["first"]):
        out["answers"] = out["answers"] + ext["answers"]
        out["generated_tokens"] += ext["generated_tokens"]
    return out


def gold_case(rec: dict, path: str | Path = "", line: int | None = None) -> Case:
    try:
        return Case(rec["fact"], tuple(rec["relevant_articles"]), rec["charge"], rec["prison_time"])
    except (KeyError, TypeError) as err:
        raise InputError(path, f"malformed case record ({err!r}); delete the file to start afresh",
                         line=line) from None


def accepted_flags(rec: dict, gold: Case, path: str | Path = "", line: int | None = None) -> list[bool]:
    """Per answer of a record (a case's, or further draws of it): finished and right under the exact rule (term
    tolerance 0). Decides resampling and the coverage figures; the filter stage makes the final call under its own
    `filter.*` rule."""
    try:
        return [bool(a["finished"]) and is_correct(None if a["parse"] is None else Answer(**a["parse"]), gold, 0)
                for a in rec["answers"]]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"malformed case record ({err!r}); delete the file to start afresh",
                         line=line) from None


@dataclass
class Tally:
    """Running totals over case records. `correct` uses the exact rule (tolerance 0): a preview, filter decides.
    `covered_first` / `covered`: cases with an accepted answer (finished and exactly right) among their first
    num_samples draws / among all their draws; `resampled`: cases that drew more, `extra_answers` how many more."""

    cases: int = 0
    answers: int = 0
    correct: int = 0
    format_errors: int = 0
    unfinished: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    covered_first: int = 0
    covered: int = 0
    resampled: int = 0
    extra_answers: int = 0

    def add(self, rec: dict, path: str | Path = "", line: int | None = None) -> None:
        try:
            parses = [None if a["parse"] is None else Answer(**a["parse"]) for a in rec["answers"]]
            finished = [bool(a["finished"]) for a in rec["answers"]]
            prompt_tokens, generated_tokens = int(rec["prompt_tokens"]), int(rec["generated_tokens"])
            first = int(rec.get("first_draws", len(parses)))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"malformed case record ({err!r}); delete the file to start afresh",
                             line=line) from None
        gold = gold_case(rec, path, line)
        correct = [is_correct(a, gold, term_tolerance=0) for a in parses]
        ok = [c and f for c, f in zip(correct, finished, strict=True)]  # what accepted_flags gives
        self.cases += 1
        self.answers += len(parses)
        self.format_errors += sum(a is None for a in parses)
        self.unfinished += sum(not f for f in finished)
        self.correct += sum(correct)
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens
        self.covered_first += any(ok[:first])
        self.covered += any(ok)
        self.resampled += len(parses) > first
        self.extra_answers += len(parses) - first


# --- the resumable partial file ----------------------------------------------------------------------------------

class PartialFile:
    """The sample journal: which cases are done (and where their lines are), their further draws, and per case
    the answers drawn and accepted so far (what resampling decides on)."""

    def __init__(self, path: Path, settings: dict, case_ids: dict[int, str], tally: Tally):
        self.path, self.case_ids, self.tally = path, case_ids, tally
        self.done: dict[int, Span] = {}  # case index -> its record's line in the journal
        self.extras: dict[int, list[Span]] = {}  # case index -> the lines of its further draws
        self.drawn: dict[int, int] = {}
        self.accepted: dict[int, int] = {}
        self.gold: dict[int, Case] = {}
        self.journal = Journal(path, settings, who="sample")
        self.journal.open(self._resume)
        self.resumed = len(self.done)

    def _resume(self, lineno: int, rec: dict, span: Span) -> None:
        index = rec.get("index")
        if index not in self.case_ids or rec.get("case_id") != self.case_ids[index]:
            raise InputError(self.path, "record for a case this run does not sample; delete the file to start "
                                        "afresh", line=lineno, field="case_id")
        if "first" in rec:
            if index not in self.done or rec["first"] != self.drawn[index]:
                raise InputError(self.path, f"further draws of case {index} out of order; delete the file to start "
                                            "afresh", line=lineno, field="first")
            self._count(rec, lineno)
            self.extras.setdefault(index, []).append(span)
            return
        if index in self.done:
            raise InputError(self.path, f"case {index} recorded twice; delete the file to start afresh", line=lineno)
        self.tally.add(rec, self.path, lineno)
        self._count(rec, lineno)
        self.done[index] = span

    def _count(self, rec: dict, lineno: int | None = None) -> None:
        index = rec["index"]
        if "first" not in rec:
            self.gold[index] = gold_case(rec, self.path, lineno)
        self.drawn[index] = self.drawn.get(index, 0) + len(rec["answers"])
        self.accepted[index] = self.accepted.get(index, 0) + sum(
            accepted_flags(rec, self.gold[index], self.path, lineno))

    def append(self, records: list[dict]) -> None:
        """One write per batch, then flush and fsync: once this returns the batch survives a kill or power loss."""
        for rec, span in zip(records, self.journal.append(records), strict=True):
            self._count(rec)
            if "first" in rec:
                self.extras.setdefault(rec["index"], []).append(span)
            else:
                self.done[rec["index"]] = span

    def close(self) -> None:
        self.journal.close()

    def finalize(self, out: Path, order: Sequence[int], keep_header: bool = False) -> Tally:
        """Write the records in `order`, each with its further draws merged in, to `out` atomically, the header line
        first only if `keep_header` (a shard's file: the merge checks it); remove the partial file."""
        tally = Tally()

        def merged(read):
            for i in order:
                rec = merge_extras(read(self.done[i]), [read(s) for s in self.extras.get(i, [])])
                tally.add(rec, self.path)
                yield rec

        self.journal.write_to(out, merged, keep_header)
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
    family: str = ""  # the round's streams (generation.stream_seed): "" for round1, the round's name after it


@dataclass
class RunStats:
    tally: Tally
    resumed_cases: int
    new_tokens: int
    generate_seconds: float


def needs_more(partial: PartialFile, index: int, sp: SampleParams) -> bool:
    """Difficulty-aware resampling: fewer than min_accepted accepted answers, and draws left under max_samples."""
    return partial.accepted[index] < sp.min_accepted and partial.drawn[index] < sp.draw_limit


class Sampler:
    """The sampling loop over one job: the first num_samples draws of every case, then further draws for the
    cases resampling picks, each group journaled as soon as it returns."""

    def __init__(self, job: Job, backend: Backend, sp: SampleParams, partial: PartialFile):
        self.job, self.backend, self.sp, self.partial = job, backend, sp, partial
        self.size = call_size(sp.backend, sp.batch_size, sp.chunk_size, len(job.indices))
        self.new_tokens, self.seconds = 0, 0.0

    def _generate(self, ks: Sequence[int], n: int, first: int) -> list[PromptResult]:
        """`n` answers for each selected case, its draws `first` .. `first` + n - 1 (streams stream + first + j)."""
        gen = GenerationSettings(n, self.sp.temperature, self.sp.top_p, self.sp.max_new_tokens)
        seeds = [stream_seed(self.job.seed, self.job.indices[k], self.job.family) + first for k in ks]
        t0 = time.perf_counter()
        results = self.backend.generate([self.job.prompts[k] for k in ks], gen, seeds)
        self.seconds += time.perf_counter() - t0
        return results

    def _save(self, records: list[dict], bar: tqdm) -> None:
        self.partial.append(records)
        self.new_tokens += sum(r["generated_tokens"] for r in records)
        bar.update(len(records))
        bar.set_postfix(accepted=sum(self.partial.accepted.values()),
                        tok_s=f"{self.new_tokens / max(self.seconds, 1e-9):.0f}")

    def first_draws(self) -> None:
        job, partial = self.job, self.partial
        with tqdm(total=len(job.indices), initial=partial.resumed, unit="case", desc="sample",
                  dynamic_ncols=True) as bar:
            # A fixed grid of groups over the selected cases: a resumed run meets the same boundaries.
            for start in range(0, len(job.indices), self.size):
                todo = [k for k in range(start, min(start + self.size, len(job.indices)))
                        if job.indices[k] not in partial.done]
                if todo:
                    results = self._generate(todo, self.sp.num_samples, 0)
                    self._save([case_record(job.indices[k], job.cases[job.indices[k]], job.prompts[k], r)
                                for k, r in zip(todo, results, strict=True)], bar)

    def further_draws(self) -> None:
        """Until no case needs more: the cases that need more and have drawn least get num_samples more draws (fewer
        where max_samples is near). Which cases need more follows from the records alone, so a resumed run
        continues with the same ones."""
        job, partial, sp = self.job, self.partial, self.sp
        while need := [k for k in range(len(job.indices)) if needs_more(partial, job.indices[k], sp)]:
            first = min(partial.drawn[job.indices[k]] for k in need)
            group = [k for k in need if partial.drawn[job.indices[k]] == first]
            n = min(sp.num_samples, sp.draw_limit - first)
            with tqdm(total=len(group), unit="case", desc=f"resample {first}-{first + n - 1}",
                      dynamic_ncols=True) as bar:
                for start in range(0, len(group), self.size):
                    todo = group[start:start + self.size]
                    results = self._generate(todo, n, first)
                    self._save([extra_record(job.indices[k], job.cases[job.indices[k]], first, r)
                                for k, r in zip(todo, results, strict=True)], bar)


def sample(job: Job, backend: Backend, sp: SampleParams, out: Path) -> RunStats:
    """Generate every case of `job` not yet in the partial file, then write `out`. Ctrl-C keeps what is done."""
    partial = PartialFile(partial_path(out), job.settings, {i: job.cases[i].case_id for i in job.indices}, Tally())
    sampler = Sampler(job, backend, sp, partial)
    try:
        sampler.first_draws()
        sampler.further_draws()
    except KeyboardInterrupt:
        partial.close()
        print(f"\nsample: interrupted; {len(partial.done)} of {len(job.indices)} cases are saved in {partial.path}. "
              "Rerun to continue.", file=sys.stderr)
        raise SystemExit(130) from None
    tally = partial.finalize(out, sorted(job.indices), keep_header=sp.num_shards > 1)
    return RunStats(tally, partial.resumed, sampler.new_tokens, sampler.seconds)


def metrics(stats: RunStats, missing_articles: int) -> dict:
    """The stage's results: counts that depend only on the inputs and settings, never on the machine. Coverage is
    the share of cases with an accepted answer (finished, exactly right): after the first num_samples draws and at
    the end, after resampling."""
    return tally_metrics(stats.tally) | {"missing_articles": missing_articles}


def tally_metrics(t: Tally) -> dict:
    """The counts of a set of case records (a run's, or the shards' merged)."""
    share = (lambda k: round(k / t.cases, 6)) if t.cases else (lambda k: None)
    return {"cases": t.cases, "answers_generated": t.answers, "generated_tokens": t.generated_tokens,
            "prompt_tokens": t.prompt_tokens, "correct_exact": t.correct, "format_errors": t.format_errors,
            "unfinished_answers": t.unfinished, "coverage_first": share(t.covered_first), "coverage": share(t.covered),
            "cases_resampled": t.resampled, "extra_answers": t.extra_answers}


def run_info(stats: RunStats, backend: str, device: str) -> dict:
    """How this run went (its time file): throughput of this run's generate calls only (model loading and
    resumed cases are not in it), backend, device and resumed cases."""
    tok_s = round(stats.new_tokens / stats.generate_seconds, 1) if stats.generate_seconds else None
    return {"tokens_per_second": tok_s, "backend": backend, "device": device, "resumed_cases": stats.resumed_cases}


def policy(p: Params, round_name: str) -> str | None:
    """The adapter that samples round `round_name` (the round before it), or None: round1 samples from the base."""
    name = p.round(round_name).policy
    return None if name == "base" else paths.round_files(name)["adapter"]


def streams(round_name: str) -> str:
    """The round's stream family: round1 keeps the run's own streams, a later round draws from fresh ones."""
    return "" if round_name == "round1" else round_name


def run(p: Params, round_name: str) -> tuple[dict, dict]:
    """The sample stage of round `round_name`: every case of this shard (all cases when unsharded) sampled into its
    output file by the round's policy. Returns (metrics, run info)."""
    sp, adapter, family = p.sample, policy(p, round_name), streams(round_name)
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
    settings = run_settings(sp, paths.BASE, train_file, p.data.train_articles, prompts, p.seed, adapter, family)
    indices, prompts = longest_first(indices, prompts, lengths)
    backend = make_backend(sp.backend, base, device=sp.device, seed=p.seed, max_model_len=needed, adapter=adapter,
                           trust_remote_code=p.model.trust_remote_code, allow_pickle=p.model.allow_pickle,
                           tensor_parallel_size=sp.tensor_parallel_size,
                           gpu_memory_utilization=sp.gpu_memory_utilization, batch_invariant=sp.batch_invariant)
    out = output_path(sp, paths.round_files(round_name)["samples"])
    stats = sample(Job(cases, indices, prompts, settings, p.seed, family), backend, sp, out)
    return metrics(stats, lookup.missing), run_info(stats, backend.name, str(backend.device))
