"""Human-readable eval outputs: the markdown report and the CSVs behind the eval plots in dvc.yaml.

    table = folder_table(metrics)                        # one row per folder plus an overall row
    text = report_markdown("base", metrics, records)     # reports/eval_<model>.md
    folder_plot(metrics), term_error_plot(records)   # plots/eval_{folders,term_errors}/<model>.csv
    write_outputs("base", evaluation)                # all of an eval stage's outputs (paths.eval_files), atomically

Model text is escaped before it reaches markdown: a `|` or a newline in an answer would otherwise break the
table, and `<think>`/`<answer>` tags would be swallowed as HTML by a renderer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import pandas as pd

from lawshift.core import files, paths
from lawshift.evaluate.predictions import EXAMPLES, TERM_ERROR_CLIP, Summary, clipped_errors, write_predictions

EXAMPLE_CHARS = 300


def escape_md(text: str) -> str:
    """Text safe inside a markdown table cell: HTML-escaped, pipes escaped, line breaks as <br>."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return "<br>".join(text.splitlines()) if text else text


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _pp(original: float | None, poisoned: float | None) -> str:
    """Poisoned minus original in percentage points: how far the answers moved with the statute."""
    if original is None or poisoned is None:
        return "–"
    return f"{100 * (poisoned - original):+.1f} pp"


def folder_table(metrics: dict) -> pd.DataFrame:
    """folder | label | original | poisoned | change, one row per folder and an overall row (case-weighted)."""
    rows = [{"folder": escape_md(name), "label": f["label"], "original": _pct(f["original"]),
             "poisoned": _pct(f["poisoned"]), "change": _pp(f["original"], f["poisoned"])}
            for name, f in metrics["folders"].items()]
    o = metrics["overall"]
    rows.append({"folder": "**overall**", "label": "", "original": _pct(o["original"]),
                 "poisoned": _pct(o["poisoned"]), "change": _pp(o["original"], o["poisoned"])})
    return pd.DataFrame(rows, columns=["folder", "label", "original", "poisoned", "change"])


def label_table(metrics: dict) -> pd.DataFrame:
    rows = [{"label": label, "cases": m["n"], "original": _pct(m["original"]), "poisoned": _pct(m["poisoned"]),
             "change": _pp(m["original"], m["poisoned"]), "format valid": _pct(m["format_valid"])}
            for label, m in metrics["by_label"].items()]
    return pd.DataFrame(rows, columns=["label", "cases", "original", "poisoned", "change", "format valid"])


def unparseable_examples(records: Sequence[dict], limit: int = EXAMPLES) -> pd.DataFrame:
    rows = [{"prompt": escape_md(r["id"]), "answer": escape_md(r["answer"][:EXAMPLE_CHARS])}
            for r in records if r["parse"] is None][:limit]
    return pd.DataFrame(rows, columns=["prompt", "answer"])


def report_markdown(model: str, metrics: dict, records: Sequence[dict], notes: Sequence[str] = ()) -> str:
    """The eval report for one model: the per-folder table first, then the other figures."""
    parts = [f"# LawShift evaluation: `{escape_md(model)}`", "",
             "Success rate per folder under the original statute and the changed one (poisoned); "
             "`change` is poisoned minus original.", "",
             folder_table(metrics).to_markdown(index=False), "",
             "## By label type", "", label_table(metrics).to_markdown(index=False), "",
             "## Other figures", "",
             f"- answers in the expected format: {_pct(metrics['overall']['format_valid'])}",
             f"- charge accuracy (original split): {_pct(metrics['charge_accuracy'])}",
             f"- exact term accuracy (original split): {_pct(metrics['term_exact_accuracy'])}",
             f"- exact-answer accuracy on the training subset: {_pct(metrics['train_exact'])}"]
    if "k" in metrics:
        k, o = metrics["k"], metrics["overall"]
        parts += [f"- over k = {k} answers per prompt, pass@{k} / majority vote: original "
                  f"{_pct(o['pass_at_k']['original'])} / {_pct(o['majority']['original'])}, poisoned "
                  f"{_pct(o['pass_at_k']['poisoned'])} / {_pct(o['majority']['poisoned'])}, training subset "
                  f"{_pct(metrics['train_pass_at_k'])} / {_pct(metrics['train_majority'])}"]
    parts += [f"- {escape_md(n)}" for n in notes]
    examples = unparseable_examples(records)
    if len(examples):
        parts += ["", f"## Unparseable answers (first {len(examples)})", "", examples.to_markdown(index=False)]
    return "\n".join(parts) + "\n"


def folder_plot(metrics: dict) -> pd.DataFrame:
    """Long rows for the per-folder success chart: one bar per folder and split (`bar`); the charts stage joins
    every model's rows into one file (lawshift/experiments/charts.py)."""
    rows = [{"bar": f"{name} · {split}", "folder": name, "split": split, "accuracy": f[split]}
            for name, f in metrics["folders"].items() for split in ("original", "poisoned")]
    return pd.DataFrame(rows, columns=["bar", "folder", "split", "accuracy"])


def term_error_plot(records: Iterable[dict], clip: int = TERM_ERROR_CLIP) -> pd.DataFrame:
    """Histogram of predicted minus gold months (original split, fixed gold terms), one row per month from the
    smallest to the largest error seen, zeros included, so the line is drawn across gaps. Errors beyond
    ±clip are pooled in the end bins."""
    return term_error_table(Counter(clipped_errors(records, clip)))


def term_error_table(counts: Counter[int]) -> pd.DataFrame:
    """`term_error_plot` from the counts of clipped errors."""
    total = sum(counts.values())
    if not total:
        return pd.DataFrame({"term_error_months": [], "answers": [], "share": []})
    span = range(min(counts), max(counts) + 1)
    return pd.DataFrame({"term_error_months": list(span), "answers": [counts[e] for e in span],
                         "share": [round(counts[e] / total, 6) for e in span]})


def write_outputs(name: str, ev) -> Summary:
    """Every output of the eval stage of model `name` (`ev`: its evaluation.Evaluation) at its paths.eval_files
    paths, each file written atomically; the predictions are read once, a prompt at a time. Returns their summary."""
    where = paths.eval_files(name)
    got = write_predictions(where["predictions"], ev.prompts, ev.k)
    files.write_json(where["metrics"], got.metrics)
    files.write_text(where["report"], report_markdown(name, got.metrics, got.examples, [ev.note]))
    files.write_text(where["folders_plot"], folder_plot(got.metrics).to_csv(index=False))
    files.write_text(where["term_errors_plot"], term_error_table(got.errors).to_csv(index=False))
    return got
