"""Stage `base`: settle the base policy in models/base/.

`model.base: tiny` builds the offline tiny Qwen2 stand-in (tokenizer trained on the data, seeded weights) and
warm-starts it on templated answers so it answers in format. Any other value is a hub id or local path: it is
checked (safetensors, no remote code) and recorded as a pointer, not copied.

    python stages/base.py            # normally: dvc repro base
"""

import dataclasses
from pathlib import Path

from lawshift import files, models
from lawshift.data import ArticleLookup, load_articles, training_cases
from lawshift.params import load_params
from lawshift.runinfo import StageClock
from lawshift.tiny import TinySpec, build_model, build_tokenizer, corpus_texts, count_params
from lawshift.warmstart import warm_start

OUT = Path("models/base")
METRICS = Path("metrics/base.json")


def build_tiny_base(p) -> dict:
    t = p.model.tiny
    spec = TinySpec(**{f.name: getattr(t, f.name) for f in dataclasses.fields(TinySpec)})
    cases = training_cases(p.data.root)
    lookup = ArticleLookup(load_articles(p.data.train_articles), p.data.train_articles, p.data.strict_articles)
    tokenizer = build_tokenizer(corpus_texts(Path(p.data.root)), spec.vocab_size, spec.max_position_embeddings)
    model = build_model(tokenizer, spec)
    losses = warm_start(model, tokenizer, cases, lookup, steps=t.warmup_steps, batch_size=t.warmup_batch_size,
                        lr=t.warmup_lr, noise=t.term_noise, seed=t.seed, offsets=t.term_offsets)
    with files.atomic_path(OUT) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {"kind": "tiny", "params": count_params(model), "vocab": len(tokenizer),
            "warmup_loss_first": round(losses[0], 4) if losses else None,
            "warmup_loss_last": round(losses[-1], 4) if losses else None}


def main() -> None:
    p = load_params()
    models.offline_env()
    clock = StageClock()
    if p.model.base == "tiny":
        metrics = build_tiny_base(p)
    else:
        models.check_local_model(p.model.base, p.model.allow_pickle)
        models.load_tokenizer(p.model.base, p.model.trust_remote_code)  # fail here, not three stages later
        with files.atomic_path(OUT) as tmp:
            models.write_pointer(tmp, p.model.base)
        metrics = {"kind": "pointer", "name_or_path": p.model.base}
    metrics.update(clock.stats())
    files.write_json(METRICS, metrics)
    print(f"base: {metrics}")


if __name__ == "__main__":
    files.run_stage(main)
