"""LawShift evaluation: prompts for both splits, batched generation, per-answer scoring and the metrics.

Two questions are measured. Does the model decide the case correctly under the original statute (the
original split, prompted with `articles_original`)? Does it change its answer when the statute changes (the
poisoned split, prompted with `articles_poisoned`)? Success on both follows the benchmark's per-label rule
(`lawshift.task.scoring.lawshift_success`). A fixed, seeded subset of the training cases is scored with the
rejection-sampling criterion (`is_correct`) as well, to show whether the loop optimises what it trains for.

Flow: `build_items` / `train_items` -> `answer_all` (scored answers, resumable, spooled to disk) ->
`report.write_outputs` (predictions in item order, metrics, report). Stage `eval` (stages/eval.py) wires them:

    python stages/eval.py base      # normally: dvc repro eval@base
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lawshift.core import files, models, paths
from lawshift.core.codedeps import code_digest
from lawshift.core.files import InputError
from lawshift.core.journal import Journal
from lawshift.core.params import Params, to_dict
from lawshift.engines.backends import close, open_backend
from lawshift.engines.generation import Backend, BackendSpec, GenerationSettings, call_size, stream_seed
from lawshift.engines.raypool import RequestFailed
from lawshift.evaluate.evalmetrics import TRAIN
from lawshift.evaluate.predictions import Spool
from lawshift.task.answers import NO_VIOLATION, Answer, gold_term, normalize_charge, parse_answer
from lawshift.task.data import (
    LABELS,
    SPLITS,
    ArticleLookup,
    Case,
    Folder,
    discover_folders,
    load_articles,
    training_cases,
)
from lawshift.task.prompts import Prompt, load_prompt, render_prompt, token_lengths
from lawshift.task.scoring import is_correct, lawshift_success, term_error

log = logging.getLogger(__name__)
# How the answers are computed, not what they are: a run may resume with another pool (docs/scaling.md).
POOL_KEYS = ("workers", "cluster", "ship_models")
SHARD_KEYS = ("shard_index", "num_shards")  # a shard's own; the shards of one run share everything else



@dataclass(frozen=True)
class EvalItem:
    """One prompt to answer: a LawShift case in one split, or a training case (split `train`)."""

    id: str  # `<folder>/<split>/<index>` or `train/<index>`: unique within one evaluation
    folder: str | None
    label: str | None  # the folder's LawShift label type; None for training cases
    split: str  # original | poisoned | train
    index: int  # position in its source file
    case: Case
    prompt: str


def build_items(folders: Sequence[Folder], tokenizer, prompt: Prompt, show_old_statute: bool = False,
                strict_articles: bool = False) -> tuple[list[EvalItem], int]:
    """Prompts for every case of both splits of each folder, each split with its own articles file; also the
    number of cited article ids the articles files lack (an error instead when `strict_articles`)."""
    items, missing = [], 0
    for folder in folders:
        lookups = {split: ArticleLookup(folder.articles(split), str(folder.path / f"articles_{split}.json"),
                                        strict_articles) for split in SPLITS}
        for split in SPLITS:
            source = folder.path / f"{split}.json"
            for i, case in enumerate(folder.cases(split)):
                articles = lookups[split].for_case(case, i, source)
                old = None
                if split == "poisoned" and show_old_statute:
                    old = lookups["original"].for_case(case, i, source)
                text = render_prompt(tokenizer, prompt.messages(case.fact, articles, old_articles=old))
                items.append(EvalItem(f"{folder.name}/{split}/{i}", folder.name, folder.label, split, i, case, text))
        missing += sum(lookup.missing for lookup in lookups.values())
    return items, missing


def train_subset_indices(num_cases: int, size: int, seed: int) -> list[int]:
    """A fixed, seeded choice of `size` training cases (all of them when there are fewer), in file order."""
    if size <= 0:
        return []
    return sorted(random.Random(seed).sample(range(num_cases), min(size, num_cases)))


def train_items(root: str | Path, articles_path: str | Path, size: int, seed: int, tokenizer, prompt: Prompt,
                strict_articles: bool = False) -> tuple[list[EvalItem], int]:
    """Training-case prompts built as the sample stage builds them (data.train_articles), and the number of
    article ids missing from that file."""
    if size <= 0:
        return [], 0
    cases = training_cases(root)
    lookup = ArticleLookup(load_articles(articles_path), str(articles_path), strict_articles)
    source = Path(root) / "training_set.json"
    items = []
    for i in train_subset_indices(len(cases), size, seed):
        case = cases[i]
        text = render_prompt(tokenizer, prompt.messages(case.fact, lookup.for_case(case, i, source)))
        items.append(EvalItem(f"{TRAIN}/{i}", None, None, TRAIN, i, case, text))
    return items, lookup.missing


# ---------------------------------------------------------------------------------------------------------------
# Scoring one answer


def answer_dict(answer: Answer | None) -> dict | None:
    if answer is None:
        return None
    return {"verdict": answer.verdict, "charge": answer.charge, "term": answer.term}


def gold_checks(answer: Answer | None, case: Case) -> tuple[bool | None, bool | None]:
    """(charge right, term exactly right) against the gold labels; None where the label does not apply.

    A no-violation gold has a charge to match (acquittal) but no term; an empty gold charge has neither.
    """
    gold_charge = normalize_charge(case.charge)
    if not gold_charge:
        return None, None
    if gold_charge == NO_VIOLATION:
        return answer is not None and answer.verdict == "NV", None
    if answer is None or answer.verdict != "V":
        return False, False
    return answer.charge == gold_charge, answer.term == gold_term(case.prison_time)


def score_answer(item: EvalItem, text: str, sample: int, low: int, high: int) -> dict:
    """The prediction record for one answer: what was asked, what came back, how it parsed and scored.

    Gold-label checks (charge, exact term, term error) are made on the original split only: a poisoned
    record carries the original case's labels, which the changed statute no longer decides. There the
    label type's rule (`lawshift_success`) is the measure.
    """
    answer = parse_answer(text)
    if item.split == TRAIN:
        success = is_correct(answer, item.case, term_tolerance=0)  # the exact rule: what the loop optimises
    else:
        success = lawshift_success(answer, item.label, item.split, low, high)
    charge_ok, term_ok, err = None, None, None
    if item.split == "original":
        charge_ok, term_ok = gold_checks(answer, item.case)
        err = term_error(answer, item.case)
    return {"id": item.id, "folder": item.folder, "label": item.label, "split": item.split, "index": item.index,
            "sample": sample, "case_id": item.case.case_id,
            "gold": {"charge": item.case.charge, "prison_time": item.case.prison_time},
            "answer": text, "parse": answer_dict(answer), "success": success,
            "charge_correct": charge_ok, "term_exact": term_ok, "term_error": err}


# ---------------------------------------------------------------------------------------------------------------
# Generation: batched, resumable


class PartialLog:
    """The eval journal (lawshift/core/journal.py): one record per finished batch, `{"batch": b, "records": [...]}`,
    under a header of everything that decides the predictions. A journal from other inputs is started afresh."""

    def __init__(self, path: str | Path, settings: dict):
        self.journal = Journal(path, settings, who="eval")

    def replay(self, keep: Callable[[int, list[dict]], None]) -> set[int]:
        """Open the journal, handing each batch a matching earlier run finished to `keep(batch, records)`; their
        numbers. One batch is in memory at a time."""
        done: set[int] = set()

        def one(lineno: int, rec: dict, _span) -> None:
            if not isinstance(rec.get("batch"), int) or not isinstance(rec.get("records"), list):
                raise InputError(self.journal.path, "not a batch of records; delete the file to start over",
                                 line=lineno)
            done.add(rec["batch"])
            keep(rec["batch"], rec["records"])

        self.journal.open(one)
        return done

    def load(self) -> dict[int, list[dict]]:
        """Open the journal; the batches a matching earlier run finished."""
        done: dict[int, list[dict]] = {}
        self.replay(done.__setitem__)
        return done

    def append(self, batch: int, records: list[dict]) -> None:
        self.journal.append([{"batch": batch, "records": records}])

    def remove(self) -> None:
        self.journal.remove()


def batches(items: Sequence[EvalItem], lengths: Sequence[int], batch_size: int) -> list[list[EvalItem]]:
    """Longest prompts first: little padding per batch, and a memory failure shows in the first batch."""
    order = sorted(range(len(items)), key=lambda i: (-lengths[i], i))
    return [[items[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]


def item_seeds(items: Sequence[EvalItem], seed: int) -> dict[str, int]:
    """Each prompt's first random stream, from (seed, its position in the evaluation): its k answers draw from the
    same streams whatever batch or chunk it falls in and after a resume (the same bytes on the `hf` backend on CPU;
    lawshift/engines/generation.py says when else)."""
    return {it.id: stream_seed(seed, k) for k, it in enumerate(items)}


def new_groups(backend: Backend, groups: list[list[EvalItem]], settings: GenerationSettings,
               seeds: Mapping[str, int], low: int, high: int, partial: PartialLog | None = None,
               done: Collection[int] = ()) -> Iterator[tuple[int, list[dict]]]:
    """Answer, score and journal each group not `done`, in order; yields (group number, its records). `seeds` maps an
    item id to its stream."""
    total = sum(len(g) for g in groups)
    resumed = sum(len(g) for b, g in enumerate(groups) if b in done)
    with tqdm(total=total, initial=resumed, desc="eval cases", unit="case") as bar:
        for b, group in enumerate(groups):
            if b in done:
                continue
            try:
                results = backend.generate([it.prompt for it in group], settings, [seeds[it.id] for it in group])
            except RequestFailed as err:  # a pool's worker refused one request: name its case, do not hang
                raise InputError(group[err.index].id, f"eval failed on a Ray worker: {err.message}") from None
            recs = [score_answer(it, c.text, j, low, high) | {"finished": c.finished, "num_tokens": c.num_tokens}
                    for it, res in zip(group, results, strict=True) for j, c in enumerate(res.completions)]
            if partial:
                partial.append(b, recs)
            bar.update(len(group))
            yield b, recs


def generate_records(backend: Backend, groups: list[list[EvalItem]], settings: GenerationSettings,
                     seeds: Mapping[str, int], low: int, high: int,
                     partial: PartialLog | None = None) -> Iterator[dict]:
    """Every group's records in group order, the journal's batches held in memory (the stage spools instead)."""
    done = partial.load() if partial else {}
    fresh = new_groups(backend, groups, settings, seeds, low, high, partial, set(done))
    for b in range(len(groups)):
        if b not in done:
            _, done[b] = next(fresh)
        yield from done[b]


def answer_all(backend: Backend, items: Sequence[EvalItem], groups: list[list[EvalItem]],
               settings: GenerationSettings, seeds: Mapping[str, int], low: int, high: int, partial: PartialLog,
               directory: str | Path) -> Spool:
    """Every item's scored records, resumed from the journal and then generated, spooled in `directory` to be read
    back in item order: the stage holds one batch of answers at a time."""
    spool = Spool([it.id for it in items], directory)
    done = partial.replay(lambda _b, recs: spool.add(recs))
    for _, recs in new_groups(backend, groups, settings, seeds, low, high, partial, done):
        spool.add(recs)
    return spool


# ---------------------------------------------------------------------------------------------------------------
# The eval stage


@dataclass
class Evaluation:
    prompts: Iterable[list[dict]]  # each prompt's scored answers, in item order (a Spool, or lists in memory)
    k: int  # answers per prompt
    note: str  # for the report: prompts, answers per prompt, missing article ids
    partial: PartialLog | None  # removed by the stage once the outputs are written
    shard: dict | None = None  # a shard's header: the whole run's settings, every prompt id in order, k, missing


def prompts(p: Params, tokenizer, config) -> tuple[list[EvalItem], list[int], int]:
    """Both splits of every chosen folder, then the training subset; fails early if one cannot fit the context.
    Returns the items, their prompt lengths in tokens and the number of cited article ids not found."""
    e = p.eval
    folders = discover_folders(p.data.root, e.folders or None)
    if not folders:
        raise InputError(p.data.root, "no LawShift folders here (names as in lawshift/task/labels.json)",
                         field="data.root")
    prompt = load_prompt(e.prompt)
    items, missing = build_items(folders, tokenizer, prompt, e.show_old_statute, p.data.strict_articles)
    train, train_missing = train_items(p.data.root, p.data.train_articles, e.train_subset, p.seed, tokenizer, prompt,
                                       p.data.strict_articles)
    items += train
    lengths = token_lengths(tokenizer, (it.prompt for it in items))
    models.check_context(config, max(lengths) + e.max_new_tokens, "eval.max_new_tokens")
    return items, lengths, missing + train_missing


def run_settings(p: Params, items: Sequence[EvalItem], base: str, adapter: str | None,
                 leave_out: Sequence[str] = POOL_KEYS) -> dict:
    """Everything that decides the predictions, the code and the label table included: the journal's header.
    `base` is models/base (for a hub model its pointer, which holds every file's sha256), not the folder it points
    to, so the weights are not hashed again."""
    ev = {k: v for k, v in to_dict(p.eval).items() if k not in leave_out}
    return {"code": code_digest("eval"), "labels": files.file_digest(LABELS), "eval": ev, "seed": p.seed,
            "prompts": files.json_list_digest([it.id, it.prompt] for it in items), "base": files.model_digest(base),
            "adapter": adapter and files.model_digest(adapter)}


def model_names(p: Params) -> list[str]:
    """The models eval can evaluate: the base, each round's and the GRPO arm's."""
    return [paths.BASE_MODEL, *p.rounds, paths.GRPO]


def run(p: Params, name: str) -> Evaluation:
    """Evaluate model `name` (`base`, or a round's: the base with that round's adapter), resuming an interrupted run
    from its partial predictions journal."""
    if name not in model_names(p):
        raise InputError("params.yaml", f"unknown model {name!r}; expected one of {model_names(p)}", field="rounds")
    where = paths.eval_files(name)
    e, adapter = p.eval, where["adapter"] or None
    base = models.resolve_base(paths.BASE)
    # Tokenizer and config only: the prompts are built and checked against the context before any weights load.
    tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)
    items, lengths, missing = prompts(p, tokenizer, models.load_config(base, p.model.trust_remote_code))
    spec = BackendSpec(e.backend, base, e.device, p.seed, max(lengths) + e.max_new_tokens, adapter,
                       p.model.trust_remote_code, p.model.allow_pickle, e.tensor_parallel_size,
                       e.gpu_memory_utilization, e.batch_invariant)
    backend = open_backend(spec, e.workers, 0, e.cluster, e.ship_models)
    k = e.num_samples if e.temperature > 0 else 1  # greedy answers are all the same: one is enough
    settings = GenerationSettings(n=k, temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens)
    seeds = item_seeds(items, p.seed)  # by position in the whole evaluation: a shard keeps every prompt's streams
    shard = {"settings": run_settings(p, items, paths.BASE, adapter, POOL_KEYS + SHARD_KEYS),
             "ids": [it.id for it in items], "k": k, "missing": missing} if e.num_shards > 1 else None
    mine = range(e.shard_index, len(items), e.num_shards)
    items, lengths = [items[i] for i in mine], [lengths[i] for i in mine]
    out = paths.shard_file(where["predictions"], e.shard_index, e.num_shards)
    partial = PartialLog(out + ".partial", run_settings(p, items, paths.BASE, adapter))
    groups = batches(items, lengths, call_size(e.backend, e.batch_size, e.chunk_size, len(items)))
    try:
        spool = answer_all(backend, items, groups, settings, seeds, e.term_low, e.term_high, partial,
                           Path(out).parent)
    finally:
        close(backend)
    partial.journal.close()
    note = (f"{len(items)} prompts, {k} answer(s) each; {missing} cited article id(s) not found in the articles "
            "files (left out of the prompts)")
    return Evaluation(spool, k, note, partial, shard)
