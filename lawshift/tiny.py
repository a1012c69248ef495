"""Build a tiny, offline stand-in for Qwen/Qwen2.5-0.5B-Instruct.

The pipeline is written against the real Qwen2.5 instruct model, but tests and CPU smoke runs cannot download it.
This module builds, from a seed and a text corpus, a ~1M-parameter model with the same architecture
(`Qwen2ForCausalLM`) and a byte-level BPE tokenizer with the same pre-tokenization, special tokens and ChatML chat
template, and saves both with `save_pretrained`. Downstream code then loads the directory exactly as it would load
the hub model:

    from pathlib import Path
    from lawshift.tiny import TinySpec, build_tiny, corpus_texts

    build_tiny(corpus_texts(Path("data/lawshift-sample")), TinySpec(seed=0), Path("models/tiny"))
    tok = AutoTokenizer.from_pretrained("models/tiny")
    model = AutoModelForCausalLM.from_pretrained("models/tiny")

The model is randomly initialised (seeded), so its generations are noise; it exists to exercise code paths.
Nothing here touches the Hugging Face hub.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from lawshift.data import SPLITS, load_articles, load_cases
from lawshift.prompts import SYSTEM_PROMPT

# Qwen2.5's special tokens: <|endoftext|> pads, <|im_end|> ends a chat turn (and generation).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# ChatML as Qwen2.5 renders system/user/assistant turns without tools, minus its default system prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Strings the project's prompts and answers use; kept in the corpus so they get their own merges.
TEMPLATE_STRINGS = [
    *"0123456789",
    "XT",
    "不违规",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "|",
    "个月",
    "罪名",
    "刑期",
    "<think>依据【",
    "】，被告人的行为构成",
    "罪，结合情节量刑。</think><answer> ",
    " </answer>",
    "修改前法条：",
    "修改后法条（现行有效）：",
    "法条：",
    "案件事实：",
]
TEMPLATE_REPEATS = 50


@dataclass
class TinySpec:
    # defaults give ~0.88M parameters with a 3000-token vocabulary (embeddings 384k, each layer ~246k);
    # hidden 64 / intermediate 256 would give only ~0.32M
    vocab_size: int = 3000
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    seed: int = 0


# -----------------------------------------------------------------------------
# corpus


def corpus_texts(root: Path) -> list[str]:
    """Tokenizer training text from a LawShift root: facts, charges, article texts, prompt and answer templates.

    The prompt and answer templates are repeated so BPE learns whole-tag merges (`<answer>`, `</think>`): like a real
    instruct tokenizer, the format then costs a few tokens rather than one per letter.
    """
    root = Path(root)
    texts: list[str] = []
    case_files = [root / "training_set.json"]
    article_files = [root / "criminal_law_articles.json"]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        case_files += [folder / f"{split}.json" for split in SPLITS]
        article_files += sorted(folder.glob("articles_*.json"))
    for path in case_files:
        if path.exists():
            texts += [t for case in load_cases(path, allow_empty=True) for t in (case.fact, case.charge)]
    for path in article_files:
        if path.exists():
            texts += list(load_articles(path).values())
    return texts + (TEMPLATE_STRINGS + [SYSTEM_PROMPT]) * TEMPLATE_REPEATS


# -----------------------------------------------------------------------------
# tokenizer


def build_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 4096) -> PreTrainedTokenizerFast:
    """Train a Qwen2-style byte-level BPE tokenizer on `texts`, wrapped for transformers with a ChatML template."""
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # Exactly transformers' Qwen2Tokenizer pipeline (NFC, its split regex, ByteLevel). It has to be: AutoTokenizer sees
    # model_type "qwen2" in config.json and rebuilds the backend as Qwen2Tokenizer from our vocab/merges, so any other
    # pipeline would tokenize differently once loaded. Digits split one per token as in Qwen; add_prefix_space=False
    # keeps decode(encode(x)) == x (for NFC text, which Chinese judgments are).
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # the full byte alphabet makes every string encodable, even characters never seen in training
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    # only the ChatML tokens are special; <think>/<answer> tags stay plain text so they survive skip_special_tokens
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        extra_special_tokens=[IM_START, IM_END],  # v5 name for additional_special_tokens
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


# -----------------------------------------------------------------------------
# model


def build_model(tokenizer: PreTrainedTokenizerFast, spec: TinySpec) -> Qwen2ForCausalLM:
    """A randomly initialised fp32 Qwen2ForCausalLM sized by `spec`, its vocabulary matching `tokenizer`."""
    pad_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,  # as Qwen2.5-0.5B; also halves the parameter count here
        bos_token_id=pad_id,  # Qwen2.5 also uses <|endoftext|> as bos
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",  # v5 loads with dtype="auto", so the saved dtype decides what callers get
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    # generate() reads these, not the model config: stop at the end of the assistant turn, pad with endoftext
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    return model


def count_params(model: torch.nn.Module) -> int:
    # parameters() yields tied tensors once, so the shared embedding / lm_head counts once
    return sum(p.numel() for p in model.parameters())


def build_tiny(texts: Iterable[str], spec: TinySpec, out_dir: Path) -> int:
    """Build tokenizer and model and save both to `out_dir` (safetensors). Returns the parameter count."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts, spec.vocab_size, model_max_length=spec.max_position_embeddings)
    model = build_model(tokenizer, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    n_params = count_params(model)
    print(f"tiny qwen2: {n_params / 1e6:.2f}M params, vocab {len(tokenizer)}, saved to {out_dir}")
    return n_params
