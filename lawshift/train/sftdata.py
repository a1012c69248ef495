"""The SFT data side: the filter's accepted answers read, validated and encoded for training.

Input: `outputs/sft.jsonl` from the filter stage, one accepted answer per line with the exact rendered `prompt`
it was sampled from, the `response`, its `weight` (1/n for a case with n accepted answers) and its `case_id`.
Each becomes an `Example` (lawshift/train/examples.py: the prompt masked, the answer and its `<|im_end|>` trained); the
Trainer reads them through `SftDataset` and batches them with `Collator`.

Length. An answer whose prompt + response + `<|im_end|>` is longer than `train.max_length` tokens is dropped, never
truncated (a cut answer would train a label that was never the answer), and counted in `dropped_too_long`. The
remaining answers of its case are rescaled so the case keeps its total weight; a case whose answers are all too
long is dropped (`dropped_cases`). If nothing is left, that is an error naming `train.max_length`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lawshift.core import paths
from lawshift.core.files import InputError, read_jsonl
from lawshift.core.params import param_error
from lawshift.train.examples import Example, collate, encode_example


@dataclass
class SftRecord:
    case_id: str
    prompt: str
    response: str
    weight: float


def _field(rec: dict, name: str, kind: type, path: Path, line: int):
    value = rec.get(name)
    if name not in rec:
        raise InputError(path, "missing", line=line, field=name)
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise InputError(path, f"must be a positive finite number, got {value!r}", line=line, field=name)
        return float(value)
    if not isinstance(value, kind) or not value.strip():
        raise InputError(path, f"must be a non-empty {kind.__name__}, got {value!r}"[:120], line=line, field=name)
    return value


def read_sft(path: str | Path) -> list[SftRecord]:
    """Validated records of `outputs/sft.jsonl`; no records at all is an error pointing at the filter's metrics."""
    path = Path(path)
    records = []
    for line, rec in read_jsonl(path):
        if not isinstance(rec, dict):
            raise InputError(path, f"expected an object, got {type(rec).__name__}", line=line)
        records.append(SftRecord(case_id=_field(rec, "case_id", str, path, line),
                                 prompt=_field(rec, "prompt", str, path, line),
                                 response=_field(rec, "response", str, path, line),
                                 weight=_field(rec, "weight", float, path, line)))
    if not records:
        raise InputError(path, f"no accepted answers to train on: the filter accepted none (see "
                               f"{filter_metrics_of(path)} for per-case counts; a stronger base or more samples "
                               "per case may help)")
    return records


def filter_metrics_of(sft: str | Path) -> str:
    """The filter metrics file beside a round's sft.jsonl (outputs/<round>/sft.jsonl -> metrics/<round>/filter.json);
    for another file, the filter's metrics in general."""
    name = Path(sft).parent.name
    if Path(sft).as_posix().endswith(paths.round_files(name)["sft"]):
        return paths.round_files(name)["filter_metrics"]
    return "the filter's metrics"


@dataclass
class TrainData:
    examples: list[Example]
    records: int
    cases: int
    dropped_too_long: int
    dropped_cases: int

    @property
    def weight_sum(self) -> float:
        return sum(e.weight for e in self.examples)


def build_examples(tokenizer, records: list[SftRecord], max_length: int) -> TrainData:
    """Encode (prompt masked, answer + `<|im_end|>` trained); drop over-long answers and keep case totals."""
    kept: dict[str, list[Example]] = defaultdict(list)
    case_total: dict[str, float] = defaultdict(float)
    dropped = 0
    for rec in tqdm(records, desc="encode", unit="answer", leave=False):
        case_total[rec.case_id] += rec.weight
        ex = encode_example(tokenizer, rec.prompt, rec.response, rec.weight, rec.case_id)
        if len(ex) > max_length:
            dropped += 1
        else:
            kept[rec.case_id].append(ex)
    if not kept:
        raise param_error("train.max_length", f"all {len(records)} accepted answers are longer than {max_length} "
                                              "tokens")
    examples = []
    for case_id, exs in kept.items():
        # An answer dropped for length must not shrink its case's share: rescale the case's remaining answers.
        scale = case_total[case_id] / sum(e.weight for e in exs)
        examples += [Example(e.input_ids, e.labels, e.weight * scale, e.group) for e in exs]
    return TrainData(examples, len(records), len(kept), dropped, len(case_total) - len(kept))


class SftDataset(torch.utils.data.Dataset):
    """Examples as mappings; `padded` adds, after them, the weight-0 answer that fills a multi-process run's last
    micro-batches (lawshift/train/order.py): a copy of the shortest one, so it costs little and teaches nothing."""

    def __init__(self, examples: list[Example], padded: bool = False):
        self.examples = examples
        if padded:
            short = min(examples, key=len)
            self.examples = [*examples, Example(short.input_ids, short.labels, 0.0, short.group)]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight, "group": e.group}


@dataclass
class Collator:
    pad_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return collate([Example(**f) for f in features], self.pad_id)
