"""Join the shards of a sharded `sample` run: outputs/<round>/samples.jsonl and metrics/<round>/sample.json.

    python -m lawshift.sample.merge                      # every outputs/round1/samples.shard*-of-*.jsonl
    python -m lawshift.sample.merge --round round2       # a later round's
    python -m lawshift.sample.merge SHARD_FILE ...       # or the files given

Refuses, with one line naming the file, shards of different runs, a missing or repeated shard, and any case
missing, repeated or in the wrong shard; otherwise writes every record unchanged, in training-set order, the same
file a single process writes. Then `dvc commit sample@<round>`. docs/scaling.md has the whole recipe.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lawshift.core import files, journal, paths
from lawshift.core.files import InputError
from lawshift.core.params import SampleParams, load_params
from lawshift.sample import samples, sampling
from lawshift.task.data import Case, training_cases

SHARD_NAME = re.compile(r"\.shard(\d+)-of-(\d+)$")
# Settings that differ between the shards of one run: the shard, and the hash of the shard's own prompts (each
# shard renders only its cases; the inputs they are rendered from, model and files, must still agree).
PER_SHARD = ("shard_index", "prompts")


@dataclass
class Shard:
    path: Path
    index: int
    count: int
    settings: dict
    records: dict[int, tuple[int, bytes]]  # case index -> (line number, the line as written)


def shard_number(path: Path) -> tuple[int, int]:
    match = SHARD_NAME.search(path.stem)
    if not match:
        raise InputError(path, "not a shard file: the name must end in .shard{i}-of-{n}.jsonl")
    return int(match[1]), int(match[2])


def read_shard(path: Path) -> Shard:
    """The header and records of one shard file (a finished journal, lawshift/core/journal.py), each record checked for
    an integer index and a case id."""
    index, count = shard_number(path)
    settings, lines = journal.read(path)
    if (settings.get("shard_index"), settings.get("num_shards")) != (index, count):
        raise InputError(path, f"header says shard {settings.get('shard_index')} of {settings.get('num_shards')}, "
                               f"the file name shard {index} of {count}", line=1)
    records: dict[int, tuple[int, bytes]] = {}
    for lineno, rec, raw in lines:
        case = rec.get("index")
        if not isinstance(case, int) or isinstance(case, bool) or not isinstance(rec.get("case_id"), str):
            raise InputError(path, "a record needs an integer index and a string case_id", line=lineno)
        if case in records:
            raise InputError(path, f"case {case} recorded twice (also line {records[case][0]})", line=lineno)
        records[case] = (lineno, raw)
    return Shard(path, index, count, settings, records)


def check_shards(shards: Sequence[Shard]) -> None:
    """One run's shards, all of them, each once."""
    first = shards[0]
    for shard in shards[1:]:
        if shard.count != first.count:
            raise InputError(shard.path, f"shard of a {shard.count}-shard run, but {first.path} is of a "
                                         f"{first.count}-shard run")
        changed = sorted(k for k in set(first.settings) | set(shard.settings)
                         if k not in PER_SHARD and first.settings.get(k) != shard.settings.get(k))
        if changed:
            raise InputError(shard.path, f"written with other settings than {first.path} ({', '.join(changed)})",
                             line=1)
    seen: dict[int, Path] = {}
    for shard in shards:
        if shard.index in seen:
            raise InputError(shard.path, f"shard {shard.index} given twice (also {seen[shard.index]})")
        seen[shard.index] = shard.path
    missing = sorted(set(range(first.count)) - set(seen))
    if missing:
        stem = SHARD_NAME.sub(f".shard{missing[0]}-of-{first.count}", first.path.stem)
        raise InputError(first.path.with_name(stem + first.path.suffix),
                         f"missing: shard {missing[0]} of {first.count} (missing: {', '.join(map(str, missing))})")


def check_cases(shards: Sequence[Shard], cases: Sequence[Case], training_set: Path) -> None:
    """Every case of the training set exactly once, in the shard that samples it."""
    digest = files.file_digest(training_set)
    n = shards[0].count
    for shard in shards:
        if shard.settings.get("training_set") != digest:
            raise InputError(shard.path, f"sampled from another training set than {training_set}", line=1)
        expected = set(sampling.shard_indices(len(cases), SampleParams(shard_index=shard.index, num_shards=n)))
        for case, (lineno, raw) in shard.records.items():
            if case not in expected:
                owner = f"shard {case % n}'s" if 0 <= case < len(cases) else f"not in {training_set}"
                raise InputError(shard.path, f"case {case} is not this shard's ({owner})", line=lineno)
            if json.loads(raw)["case_id"] != cases[case].case_id:
                raise InputError(shard.path, f"not the case_id of case {case} of {training_set}", line=lineno,
                                 field="case_id")
        missing = sorted(expected - set(shard.records))
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (", …" if len(missing) > 5 else "")
            raise InputError(shard.path, f"{len(missing)} of its {len(expected)} cases missing ({shown})")


def merge(paths: Sequence[Path], cases: Sequence[Case], training_set: Path, out: Path) -> samples.Tally:
    """Check the shards and write their records in training-set order to `out`; returns the counts."""
    if not paths:
        raise InputError(out.parent, f"no shard files ({out.stem}.shard*-of-*{out.suffix}) to merge")
    shards = [read_shard(Path(p)) for p in paths]
    check_shards(shards)
    check_cases(shards, cases, training_set)
    where = {case: (shard.path, lineno, raw) for shard in shards for case, (lineno, raw) in shard.records.items()}
    tally = samples.Tally()
    with files.atomic_path(out) as tmp, open(tmp, "wb") as dst:
        for case in range(len(cases)):
            path, lineno, raw = where[case]
            tally.add(json.loads(raw), path, lineno)  # a malformed record is an InputError naming its line
            dst.write(raw)
    return tally


def merged_metrics(tally: samples.Tally, shard_metrics: Sequence[dict | None]) -> dict:
    """metrics/sample.json's keys: the counts from the merged records; missing article ids from the shards'
    metrics, when all are there."""
    out = samples.tally_metrics(tally) | {"shards": len(shard_metrics)}
    if any(m is None for m in shard_metrics):
        return out
    return out | {"missing_articles": sum(m.get("missing_articles", 0) for m in shard_metrics)}


def merged_run_info(shard_infos: Sequence[dict | None]) -> dict:
    """metrics/time/sample.json from the shards' time files (when all are there): `tokens_per_second` is their sum,
    what the shards reach running side by side; wall time and memory the largest shard's."""
    if not shard_infos or any(m is None for m in shard_infos):
        return {}
    return {"tokens_per_second": round(sum(m.get("tokens_per_second") or 0.0 for m in shard_infos), 1),
            "backend": shard_infos[0].get("backend"), "device": shard_infos[0].get("device"),
            "resumed_cases": sum(m.get("resumed_cases", 0) for m in shard_infos),
            "wall_seconds": max(m.get("wall_seconds", 0.0) for m in shard_infos),
            "peak_rss_mb": max(m.get("peak_rss_mb", 0.0) for m in shard_infos)}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lawshift.sample.merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("shards", nargs="*", type=Path, help="shard files (default: the round's samples.shard*)")
    ap.add_argument("--round", default="round1", help="the round whose shards these are (default: round1)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    p = load_params(args.params)
    p.round(args.round, args.params)
    where = paths.round_files(args.round)
    out = Path(where["samples"])
    training_set = Path(p.data.root) / "training_set.json"
    shard_paths = args.shards or paths.shard_files(out)
    tally = merge(shard_paths, training_cases(p.data.root), training_set, out)

    def per_shard(template: str) -> list[dict | None]:
        found = []
        for path in shard_paths:
            i, n = shard_number(path)
            file = sampling.output_path(SampleParams(shard_index=i, num_shards=n), template)
            found.append(files.read_json(file) if file.is_file() else None)
        return found

    metrics = merged_metrics(tally, per_shard(where["sample_metrics"]))
    files.write_json(where["sample_metrics"], metrics)
    info = merged_run_info(per_shard(where["sample_time"]))
    if info:
        files.write_json(where["sample_time"], info)
    print(f"merge: {len(shard_paths)} shards, {tally.cases} cases -> {out}; {metrics} ({info})")


if __name__ == "__main__":
    files.run_stage(main)
