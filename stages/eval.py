"""Stage `eval@<model>`: LawShift success on both splits, plus the train-set check, for one model.

`base` is models/base as it is; `sft` is models/base with the trained adapter models/sft on top. Writes
outputs/predictions_<model>.jsonl (every answer, parsed and scored), metrics/eval_<model>.json,
reports/eval_<model>.md and the plot CSVs plots/eval_<model>_folders.csv and plots/eval_<model>_term_errors.csv.
An interrupted run continues from outputs/predictions_<model>.jsonl.partial.

    python stages/eval.py base       # normally: dvc repro eval@base (or eval@sft)
"""

import sys

from lawshift import evaluation as ev
from lawshift import files, models
from lawshift.data import discover_folders
from lawshift.generation import GenerationSettings, HFBackend
from lawshift.params import load_params, to_dict
from lawshift.report import folder_plot, report_markdown, term_error_plot
from lawshift.runinfo import StageClock

ADAPTERS = {"base": None, "sft": "models/sft"}  # model name -> adapter on top of models/base


def load(p, name: str):
    """Tokenizer and config only: the prompts are built and checked against the context before any weights."""
    if name not in ADAPTERS:
        raise files.InputError("dvc.yaml", f"unknown model {name!r}; expected one of {sorted(ADAPTERS)}",
                               field="stages.eval.foreach")
    ev.check_params(p.eval)
    base = models.resolve_base("models/base")
    tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)
    return base, tokenizer, models.load_config(base, p.model.trust_remote_code)


def load_weights(p, base: str, name: str):
    device = models.pick_device(p.eval.device)
    model = models.load_model(base, device=device, trust_remote_code=p.model.trust_remote_code,
                              allow_pickle=p.model.allow_pickle, adapter=ADAPTERS[name])
    if ADAPTERS[name]:
        model = model.merge_and_unload()  # plain weights generate faster than base + LoRA on every step
    return model, device


def prompts(p, tokenizer, config) -> tuple[list, list[int], int]:
    """Both splits of every chosen folder, then the training subset; fails early if one cannot fit the context."""
    e = p.eval
    folders = discover_folders(p.data.root, e.folders or None)
    if not folders:
        raise files.InputError(p.data.root, "no LawShift folders here (names as in lawshift/labels.json)",
                               field="data.root")
    items, missing = ev.build_items(folders, tokenizer, e.show_old_statute, p.data.strict_articles)
    train, train_missing = ev.train_items(p.data.root, p.data.train_articles, e.train_subset, e.seed, tokenizer,
                                          p.data.strict_articles)
    items += train
    lengths = [len(ids) for ids in tokenizer([it.prompt for it in items], add_special_tokens=False)["input_ids"]]
    models.check_context(config, max(lengths) + e.max_new_tokens, "eval.max_new_tokens")
    return items, lengths, missing + train_missing


def write_outputs(name: str, metrics: dict, records: list[dict], note: str) -> None:
    files.write_jsonl(f"outputs/predictions_{name}.jsonl", records)
    files.write_json(f"metrics/eval_{name}.json", metrics)
    files.write_text(f"reports/eval_{name}.md", report_markdown(name, metrics, records, [note]))
    files.write_text(f"plots/eval_{name}_folders.csv", folder_plot(metrics).to_csv(index=False))
    files.write_text(f"plots/eval_{name}_term_errors.csv", term_error_plot(records).to_csv(index=False))


def main(name: str | None = None) -> None:
    name = name or (sys.argv[1] if len(sys.argv) > 1 else "")
    p = load_params()
    e = p.eval
    models.offline_env()
    clock = StageClock()
    base, tokenizer, config = load(p, name)
    items, lengths, missing = prompts(p, tokenizer, config)
    model, device = load_weights(p, base, name)
    k = e.num_samples if e.temperature > 0 else 1  # greedy answers are all the same: one is enough
    settings = GenerationSettings(n=k, temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens)
    adapter = ADAPTERS[name] and files.model_digest(ADAPTERS[name])
    fp = ev.fingerprint({"eval": to_dict(e), "prompts": [[it.id, it.prompt] for it in items],
                         "base": files.model_digest(base), "adapter": adapter})
    partial = ev.PartialLog(f"outputs/predictions_{name}.jsonl.partial", fp)
    records = list(ev.generate_records(HFBackend(model, tokenizer, device), ev.batches(items, lengths, e.batch_size),
                                       settings, e.seed, e.term_low, e.term_high, partial))
    order = {it.id: i for i, it in enumerate(items)}
    records.sort(key=lambda r: (order[r["id"]], r["sample"]))  # file order, not batch order
    metrics = ev.compute_metrics(records)
    write_outputs(name, metrics, records, f"{len(items)} prompts, {k} answer(s) each; {missing} cited article "
                  "id(s) not found in the articles files (left out of the prompts)")
    partial.remove()
    # Time and memory go beside the metrics, not into them: eval_<name>.json keeps its documented shape.
    files.write_json(f"metrics/eval_{name}_time.json", clock.stats())
    print(f"eval@{name}: overall {metrics['overall']}, train_exact {metrics['train_exact']} ({clock.stats()})")


if __name__ == "__main__":
    files.run_stage(main)
