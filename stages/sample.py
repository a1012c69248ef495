"""Stage `sample`: N answers per training case from the base policy -> outputs/samples.jsonl.

Resumable: records are appended and fsynced after every batch, so after Ctrl-C or a kill the same command
continues where it stopped (see lawshift/sampling.py for the file format and the rules).

    python stages/sample.py          # normally: dvc repro sample

Sharded over several GPUs or machines: one process per shard, each overriding `sample.shard_index` and
`sample.num_shards`, writes outputs/samples.shard{i}-of-{n}.jsonl and metrics/sample.shard{i}-of-{n}.json;
`python -m lawshift.merge` then joins them into outputs/samples.jsonl and metrics/sample.json.

    python stages/sample.py --shard-index 0 --num-shards 4
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from transformers import AutoConfig

from lawshift import files, models, sampling
from lawshift.data import ArticleLookup, load_articles, training_cases
from lawshift.params import load_params
from lawshift.runinfo import StageClock

BASE = Path("models/base")
OUT = Path("outputs/samples.jsonl")
METRICS = Path("metrics/sample.json")


def shard_overrides(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="stages/sample.py", description="the sample stage (default: all cases)")
    ap.add_argument("--shard-index", type=int, help="this process's shard (overrides sample.shard_index)")
    ap.add_argument("--num-shards", type=int, help="shards of the run (overrides sample.num_shards)")
    args = ap.parse_args(argv)
    return {k: v for k, v in (("shard_index", args.shard_index), ("num_shards", args.num_shards)) if v is not None}


def main(argv: list[str] | None = None) -> None:
    p = load_params()
    sp = dataclasses.replace(p.sample, **shard_overrides(sys.argv[1:] if argv is None else argv))
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
    files.write_json(sampling.output_path(sp, METRICS), metrics)
    print(f"sample: {metrics}")
    if sp.num_shards > 1:
        print(f"sample: shard {sp.shard_index} of {sp.num_shards} done; once all are: python -m lawshift.merge")


if __name__ == "__main__":
    files.run_stage(main)
