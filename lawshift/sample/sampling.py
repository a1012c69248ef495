"""Rejection sampling, first half: N answers per training case from a round's policy, saved so nothing is lost.

    python stages/sample.py round1        # normally `dvc repro sample@round1`

Renders one prompt per training case, sends groups of cases to the backend (`sample.batch_size` with `hf`,
`sample.chunk_size` with `vllm`), and journals every group's records as soon as they return
(lawshift/sample/samples.py),
so a rerun after Ctrl-C or SIGKILL continues. Difficulty-aware resampling draws more for cases with fewer than
`sample.min_accepted` accepted answers. Case i's answer j draws from stream `stream_seed(seed, i) + j`, whatever its
group, shard or resume. With `--num-shards n` a process samples every n-th case into a shard file that
`python -m lawshift.sample.merge` joins. docs/pipeline.md has the record format and the rules.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lawshift.core import files, models, paths
from lawshift.core.codedeps import code_digest
from lawshift.core.files import InputError
from lawshift.core.params import Params, SampleParams, param_error
from lawshift.engines.backends import close, open_backend
from lawshift.engines.generation import Backend, BackendSpec, GenerationSettings, PromptResult, call_size, stream_seed
from lawshift.engines.raypool import RequestFailed
from lawshift.sample.samples import PartialFile, Tally, case_record, extra_record, tally_metrics
from lawshift.task.data import ArticleLookup, Case, load_articles, training_cases
from lawshift.task.prompts import Prompt, load_prompt, render_prompt, token_lengths

# Settings that change what is generated; device and vLLM memory knobs do not change the records' meaning, nor
# does chunk_size (each case's streams are its own), so a vLLM run may resume with another chunk size.
SAMPLING_KEYS = ("backend", "num_samples", "temperature", "top_p", "max_new_tokens", "batch_size",
                 "shard_index", "num_shards", "min_accepted", "max_samples", "batch_invariant")


def output_path(sp: SampleParams, out: str | Path) -> Path:
    """One shard of a multi-process run writes its own file (joined by `python -m lawshift.sample.merge`)."""
    return Path(paths.shard_file(out, sp.shard_index, sp.num_shards))


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
    prompts_hash = files.json_list_digest(prompts)
    return {"code": code_digest("sample"), "model": files.model_digest(model),
            "adapter": adapter and files.model_digest(adapter), "streams": family,
            "training_set": files.file_digest(training_set),
            "articles": files.file_digest(articles), "prompts": prompts_hash,
            "seed": seed, **{k: getattr(sp, k) for k in SAMPLING_KEYS}}


# --- the sampling loop -------------------------------------------------------------------------------------------

@dataclass
class Job:
    cases: Sequence[Case]  # the whole training set: record indices refer to it
    indices: list[int]  # the cases this run samples (all of them, or one shard), in processing order
    prompts: list[str]  # rendered prompt of each selected case
    settings: dict  # run_settings(...)
    seed: int  # the run's seed (params `seed`): each case's streams derive from it and the case's index
    family: str = ""  # the round's streams (generation.stream_seed): "" for round1, the round's name after it
    source: str | Path = "training_set.json"  # where the cases come from: errors name it


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
        self.size = call_size(sp.backend, sp.batch_size, sp.chunk_size, len(job.indices), sp.workers)
        self.new_tokens, self.seconds = 0, 0.0

    def _generate(self, ks: Sequence[int], n: int, first: int) -> list[PromptResult]:
        """`n` answers for each selected case, its draws `first` .. `first` + n - 1 (streams stream + first + j)."""
        gen = GenerationSettings(n, self.sp.temperature, self.sp.top_p, self.sp.max_new_tokens)
        seeds = [stream_seed(self.job.seed, self.job.indices[k], self.job.family) + first for k in ks]
        t0 = time.perf_counter()
        try:
            results = self.backend.generate([self.job.prompts[k] for k in ks], gen, seeds)
        except RequestFailed as err:  # a pool's worker refused one request: name its case, do not hang
            raise InputError(self.job.source, f"sampling failed on a Ray worker: {err.message}",
                             index=self.job.indices[ks[err.index]]) from None
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


def run_info(stats: RunStats, backend: str, device: str) -> dict:
    """How this run went (its time file): throughput of this run's generate calls only (model loading and
    resumed cases are not in it), backend, device and resumed cases."""
    tok_s = round(stats.new_tokens / stats.generate_seconds, 1) if stats.generate_seconds else None
    return {"tokens_per_second": tok_s, "backend": backend, "device": device, "resumed_cases": stats.resumed_cases}


def case_prompts(p: Params, tokenizer) -> tuple[list[Case], list[int], list[str], list[int], ArticleLookup]:
    """The training cases, this shard's indices, their prompts and lengths in tokens (tokenised a chunk at a time:
    a run's token lists are never all held), and the lookup that counted missing article ids."""
    cases = training_cases(p.data.root)
    lookup = ArticleLookup(load_articles(p.data.train_articles), p.data.train_articles, p.data.strict_articles)
    indices = shard_indices(len(cases), p.sample)
    prompts = build_prompts(cases, indices, lookup, tokenizer, Path(p.data.root) / "training_set.json",
                            load_prompt(p.sample.prompt))
    return cases, indices, prompts, token_lengths(tokenizer, prompts), lookup


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
    cases, indices, prompts, lengths, lookup = case_prompts(p, tokenizer)
    needed = max(lengths) + sp.max_new_tokens
    # Before loading the weights: the longest prompt plus a full answer must fit the model's context.
    models.check_context(models.load_config(base, p.model.trust_remote_code), needed, "sample.max_new_tokens")
    # models/base itself, not the folder it points to: for a hub model its pointer holds every file's sha256,
    # already checked by resolve_base, so the weights are not hashed a second time.
    settings = run_settings(sp, paths.BASE, train_file, p.data.train_articles, prompts, p.seed, adapter, family)
    indices, prompts = longest_first(indices, prompts, lengths)
    spec = BackendSpec(sp.backend, base, sp.device, p.seed, needed, adapter, p.model.trust_remote_code,
                       p.model.allow_pickle, sp.tensor_parallel_size, sp.gpu_memory_utilization, sp.batch_invariant)
    backend = open_backend(spec, sp.workers, sp.batch_size if sp.backend == "hf" else 0, sp.cluster, sp.ship_models)
    out = output_path(sp, paths.round_files(round_name)["samples"])
    try:
        stats = sample(Job(cases, indices, prompts, settings, p.seed, family, train_file), backend, sp, out)
    finally:
        close(backend)
    return metrics(stats, lookup.missing), run_info(stats, backend.name, str(backend.device))
