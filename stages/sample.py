"""Stage `sample`: N answers per training case from the base policy -> outputs/samples.jsonl.

Resumable: records are appended and fsynced after every batch, so after Ctrl-C or a kill the same command
continues where it stopped (see lawshift/sampling.py for the file format and the rules).

    python stages/sample.py          # normally: dvc repro sample
"""

from pathlib import Path

from transformers import AutoConfig

from lawshift import files, models, sampling
from lawshift.data import ArticleLookup, load_articles, training_cases
from lawshift.params import load_params
from lawshift.runinfo import StageClock

BASE = Path("models/base")
OUT = Path("outputs/samples.jsonl")
METRICS = Path("metrics/sample.json")


def main() -> None:
    p = load_params()
    sp = p.sample
    sampling.check_params(sp)
    models.offline_env()
    clock = StageClock()
    base = models.resolve_base(BASE)
    tokenizer = models.load_tokenizer(base, p.model.trust_remote_code)

    train_file = Path(p.data.root) / "training_set.json"
    cases = training_cases(p.data.root)
    lookup = ArticleLookup(load_articles(p.data.train_articles), p.data.train_articles, p.data.strict_articles)
    indices = sampling.shard_indices(len(cases), sp)
    prompts = sampling.build_prompts(cases, indices, lookup, tokenizer, train_file)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    needed = max(lengths) + sp.max_new_tokens
    # Before loading the weights: the longest prompt plus a full answer must fit the model's context.
    config = AutoConfig.from_pretrained(base, trust_remote_code=p.model.trust_remote_code)
    models.check_context(config, needed, "sample.max_new_tokens")

    settings = sampling.run_settings(sp, base, train_file, p.data.train_articles, prompts)
    indices, prompts = sampling.longest_first(indices, prompts, lengths)
    device = models.pick_device(sp.device) if sp.backend == "hf" else "cuda"
    backend = sampling.make_backend(sp, base, device, trust_remote_code=p.model.trust_remote_code,
                                    allow_pickle=p.model.allow_pickle, max_model_len=needed)
    stats = sampling.sample(sampling.Job(cases, indices, prompts, settings), backend, sp,
                            sampling.output_path(sp, OUT))

    metrics = sampling.metrics(stats, backend.name, str(device), lookup.missing) | clock.stats()
    files.write_json(METRICS, metrics)
    print(f"sample: {metrics}")


if __name__ == "__main__":
    files.run_stage(main)
