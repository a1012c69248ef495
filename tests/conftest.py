"""Shared fixtures: the real LawShift sample and a small warm-started tiny base model (built once per session)."""

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "lawshift-sample"


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The real LawShift records shipped with the repo (read-only: copy before changing)."""
    return SAMPLE


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A writable copy of the LawShift sample."""
    dst = tmp_path / "lawshift"
    shutil.copytree(SAMPLE, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A small tiny Qwen2 base, warm-started briefly so it mostly answers in format. Saved like models/base."""
    from lawshift.data import ArticleLookup, load_articles, training_cases
    from lawshift.tiny import TinySpec, build_model, build_tokenizer, corpus_texts
    from lawshift.warmstart import warm_start

    out = tmp_path_factory.mktemp("tiny_base")
    spec = TinySpec(vocab_size=2000, hidden_size=64, intermediate_size=256, max_position_embeddings=2048, seed=0)
    tokenizer = build_tokenizer(corpus_texts(SAMPLE), spec.vocab_size, spec.max_position_embeddings)
    model = build_model(tokenizer, spec)
    arts_path = SAMPLE / "criminal_law_articles.json"
    lookup = ArticleLookup(load_articles(arts_path), str(arts_path))
    warm_start(model, tokenizer, training_cases(SAMPLE), lookup, steps=150, batch_size=8, lr=3e-3, noise=0.5, seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
