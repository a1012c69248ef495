"""Join the shards of a sharded eval run into the eval stage's outputs: predictions, metrics, report and plots.

    python stages/eval.py base --shard-index i --num-shards n    # one process per shard (a GPU, a Slurm task)
    python -m lawshift.evaluate.evalmerge --model base                     # then: dvc commit -f eval_base

Each shard file starts with its run's header (the whole run's settings, every prompt id in order). The merge
refuses, with one line naming the file, shards of different runs, a missing or repeated shard, and any prompt
missing or answered by two shards; otherwise it writes what one process would have written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from lawshift.core import files, paths
from lawshift.core.files import InputError
from lawshift.core.params import load_params
from lawshift.evaluate.evalmetrics import by_prompt
from lawshift.evaluate.evaluation import Evaluation
from lawshift.evaluate.predictions import write_predictions
from lawshift.evaluate.report import write_outputs


def header(index: int, num_shards: int, shard: dict) -> dict:
    """A shard file's first line: which shard of which run."""
    return {"eval_shard": {"index": index, "num_shards": num_shards, "run": files.json_digest(shard["settings"]),
                           **shard}}


def write_shard(out: str, index: int, num_shards: int, ev: Evaluation) -> dict:
    """A shard's file: its header, then its prompts' records in its order; returns the shard's own metrics."""
    return write_predictions(out, ev.prompts, ev.k, header(index, num_shards, ev.shard)).metrics


def read_shard(path: Path) -> tuple[dict, list[dict]]:
    lines = [rec for _, rec in files.read_jsonl(path)]
    head = lines[0].get("eval_shard") if lines and isinstance(lines[0], dict) else None
    if not isinstance(head, dict) or not {"index", "num_shards", "run", "ids", "k", "missing"} <= set(head):
        raise InputError(path, "no eval shard header: not a shard file of `stages/eval.py --num-shards`", line=1)
    return head, lines[1:]


def merge_records(shard_paths: Sequence[Path]) -> tuple[dict, list[dict]]:
    """The run's header and the records of every shard, checked, in the whole run's prompt order."""
    if not shard_paths:
        raise InputError("outputs", "no eval shard files (predictions.shard*-of-*.jsonl) to merge")
    shards = [(Path(p), *read_shard(Path(p))) for p in shard_paths]
    first = shards[0][1]
    for path, head, _ in shards:
        if (head["run"], head["num_shards"]) != (first["run"], first["num_shards"]):
            raise InputError(path, f"a shard of another run than {shards[0][0]} (other settings or shard count)")
    found = sorted(head["index"] for _, head, _ in shards)
    if found != list(range(first["num_shards"])):
        raise InputError(shards[0][0].parent, f"shards {found} of {first['num_shards']}: each must be there once")
    order = {pid: i for i, pid in enumerate(first["ids"])}
    records = []
    for path, head, recs in shards:
        mine = first["ids"][head["index"]::head["num_shards"]]
        allowed, answers = set(mine), Counter()
        for lineno, rec in enumerate(recs, start=2):
            if rec.get("id") not in allowed:
                raise InputError(path, f"prompt {rec.get('id')!r} is not this shard's", line=lineno, field="id")
            answers[rec["id"]] += 1
        if wrong := [pid for pid in mine if answers[pid] != first["k"]]:
            raise InputError(path, f"{len(wrong)} of its prompts without exactly {first['k']} answer(s) "
                                   f"(first: {wrong[0]}, {answers[wrong[0]]})")
        records += recs
    records.sort(key=lambda r: (order[r["id"]], r["sample"]))
    return first, records


def merge(shard_paths: Sequence[Path]) -> Evaluation:
    """What one process would have evaluated: the shards' records, their metrics and the report's note."""
    first, records = merge_records(shard_paths)
    note = (f"{len(first['ids'])} prompts, {first['k']} answer(s) each; {first['missing']} cited article id(s) not "
            "found in the articles files (left out of the prompts)")
    return Evaluation(by_prompt(records), first["k"], note, None, first)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lawshift.evaluate.evalmerge", description=__doc__.split("\n\n")[0])
    ap.add_argument("shards", nargs="*", type=Path, help="shard files (default: the model's predictions.shard*)")
    ap.add_argument("--model", default="base", help="the evaluated model: base, round1, ... (default: base)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    load_params(args.params)
    where = paths.eval_files(args.model)
    shard_paths = args.shards or paths.shard_files(where["predictions"])
    ev = merge(shard_paths)
    got = write_outputs(args.model, ev)
    n = ev.shard["num_shards"]  # the merge found each of the n shards once
    times = [Path(paths.shard_file(where["time"], i, n)) for i in range(n)]
    infos = [json.loads(t.read_text(encoding="utf-8")) for t in times if t.is_file()]
    if len(infos) == n:  # wall time and memory: the largest shard's
        files.write_json(where["time"], {"shards": len(infos), "wall_seconds": max(i["wall_seconds"] for i in infos),
                                         "peak_rss_mb": max(i["peak_rss_mb"] for i in infos)})
    print(f"evalmerge: {len(shard_paths)} shards, {got.answers} answers -> {where['predictions']}; "
          f"overall {got.metrics['overall']}")


if __name__ == "__main__":
    files.run_stage(main)
