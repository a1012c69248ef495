"""The charts' data: each kind's per-model plot files joined into one file, so one chart compares every model.

    join("eval_folders")     # plots/eval_folders/{base,round1,…}.csv -> plots/eval_folders.csv (paths.CHARTS)

A joined file has two columns in front of the per-model file's: the model's name (`model` for an evaluated model,
`round` for a round's filter or training) and `order` (0 for the base, k for round k, 1000 for grpo), then every row of
each model's file as written (numeric axes ascending), the models in order: base, round1, …, round10, grpo. The
Vega-Lite templates in .dvc/plots/ colour and group by that name and sort by `order`.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from lawshift.core import files, paths
from lawshift.core.files import InputError

# kind (a key of paths.CHARTS) -> the name of the column that names the model
NAME_COLUMN = {"eval_folders": "model", "eval_term_errors": "model", "filter_accepted": "round",
               "train_curves": "round"}
MODEL_FILE = re.compile(r"(?:(base)|round([1-9][0-9]*)|(grpo))\.csv")
GRPO_ORDER = 1000  # the GRPO arm's model comes after every round's


def model_files(folder: str | Path) -> list[tuple[str, int, Path]]:
    """(name, order, path) of every model's file in `folder`, in model order. Hidden files (a killed writer's temp
    siblings) are skipped; any other name is an error: the chart would otherwise silently leave it out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "missing: the stages that write its files have not run")
    found = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        match = MODEL_FILE.fullmatch(path.name)
        if not match or not path.is_file():
            raise InputError(path, f"not a model's plot file (expected {paths.BASE_MODEL}.csv, round<k>.csv or "
                                   f"{paths.GRPO}.csv)")
        name = path.name.removesuffix(".csv")
        order = 0 if match.group(1) else GRPO_ORDER if match.group(3) else int(match.group(2))
        found.append((name, order, path))
    if not found:
        raise InputError(folder, "holds no model's plot file")
    return sorted(found, key=lambda item: item[1])


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    table = list(csv.reader(io.StringIO(files.read_text(path))))
    if not table or not table[0]:
        raise InputError(path, "empty: a plot file needs a header line")
    return table[0], table[1:]


def joined(kind: str, folder: str | Path) -> str:
    """The CSV text of chart `kind`: every model's file of `folder`, under one header (all must share it)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = None
    for name, order, path in model_files(folder):
        columns, rows = _rows(path)
        if header is None:
            header = columns
            writer.writerow([NAME_COLUMN[kind], "order", *header])
        elif columns != header:
            raise InputError(path, f"columns {columns} differ from the other models' {header}")
        writer.writerows([name, order, *row] for row in rows)
    return out.getvalue()


def join(kind: str) -> str:
    """Write chart `kind`'s file (paths.CHARTS) from its folder, atomically; returns the chart's path."""
    where = paths.CHARTS[kind]
    files.write_text(where["chart"], joined(kind, where["folder"]))
    return where["chart"]
