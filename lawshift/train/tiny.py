"""The tiny, offline stand-in for Qwen/Qwen2.5-0.5B-Instruct: tokenizer, model and warm-start in one place.

    metrics = build_base(p.model.tiny, p.data, paths.BASE, p.seed)   # stage `base` for `model.base: tiny`
    model = AutoModelForCausalLM.from_pretrained(paths.BASE)          # loaded exactly as a hub model

From a seed and the sample's text: a ~1M-parameter `Qwen2ForCausalLM`, a byte-level BPE tokenizer with Qwen's
special tokens and ChatML template, warm-started for a few hundred steps on templated answers with a share of the
terms perturbed (`model.tiny.term_noise`), so the base is plausible but imperfect. It exercises the method's
mechanics; it is not a legal model. Nothing here touches the Hugging Face hub.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from tqdm import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from lawshift.core import files
from lawshift.core.params import DataParams, TinyParams
from lawshift.task.answers import DEATH, LIFE, NO_VIOLATION, format_answer
from lawshift.task.data import ArticleLookup, Case, load_articles, load_cases, training_cases
from lawshift.task.prompts import Prompt, render_prompt
from lawshift.train.examples import collate, encode_example, trained_token_loss

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


# -----------------------------------------------------------------------------
# corpus


def corpus_texts(training_set: str | Path, articles: str | Path, prompt: Prompt) -> list[str]:
    """Tokenizer training text from the training side only: the training cases' facts and charges, the articles
    rendered into training prompts (`data.train_articles`), the judge prompt's system text (`sample.prompt`) and the
    prompt and answer templates. No evaluation
    file is read: the base must not depend on (or have seen) the benchmark's test folders.

    The prompt and answer templates are repeated so BPE learns whole-tag merges (`<answer>`, `</think>`): like a real
    instruct tokenizer, the format then costs a few tokens rather than one per letter.
    """
    texts = [t for case in load_cases(training_set) for t in (case.fact, case.charge)]
    texts += list(load_articles(articles).values())
    return texts + (TEMPLATE_STRINGS + [prompt.system]) * TEMPLATE_REPEATS


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


def build_model(tokenizer: PreTrainedTokenizerFast, spec: TinyParams, seed: int) -> Qwen2ForCausalLM:
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
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    # generate() reads these, not the model config: stop at the end of the assistant turn, pad with endoftext
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    return model


def count_params(model: torch.nn.Module) -> int:
    # parameters() yields tied tensors once, so the shared embedding / lm_head counts once
    return sum(p.numel() for p in model.parameters())


# -----------------------------------------------------------------------------
# warm-start

NOISE_OFFSETS = (-2, -1, 1, 2, 3)  # months that may be added to a perturbed term, unless told otherwise


def template_response(case: Case, articles: list[tuple[str, str]], prison_time: int) -> str:
    cited = "、".join(f"【{art_id}】" for art_id, _ in articles) or "相关法条"
    if case.charge == NO_VIOLATION:
        think = f"依据{cited}，被告人的行为不构成犯罪。"
    elif prison_time in (LIFE, DEATH):
        think = f"依据{cited}，被告人的行为构成{case.charge}罪，情节特别严重。"
    else:
        think = f"依据{cited}，被告人的行为构成{case.charge}罪，结合情节量刑。"
    return f"<think>{think}</think>{format_answer(case.charge, prison_time)}"


def noisy_term(prison_time: int, rng: random.Random, noise: float, offsets: Sequence[int] = NOISE_OFFSETS) -> int:
    """With probability `noise`, a different fixed term `gold + offset` (>= 1 month); XT terms are kept."""
    if prison_time in (LIFE, DEATH) or rng.random() >= noise:
        return prison_time
    # Only offsets that land on another valid fixed term: clamping (1 - 1 -> 1) would silently keep the gold
    # term, and a term must never become the life/death codes.
    terms = [t for t in (prison_time + o for o in offsets) if 1 <= t < LIFE and t != prison_time]
    return rng.choice(terms) if terms else prison_time


def warm_start(model, tokenizer, cases: list[Case], lookup: ArticleLookup, prompt: Prompt, *, steps: int,
               batch_size: int, lr: float, noise: float, seed: int,
               offsets: Sequence[int] = NOISE_OFFSETS) -> list[float]:
    """Train all weights of `model` in place on `prompt`'s rendering of the training cases; returns the loss of each
    step (none for `steps` 0)."""
    if steps == 0:
        return []
    rng = random.Random(seed)
    torch.manual_seed(seed)
    prompts = []
    for i, case in enumerate(cases):
        arts = lookup.for_case(case, i)
        prompts.append((case, arts, render_prompt(tokenizer, prompt.messages(case.fact, arts))))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="warm-start", unit="step"):
        batch = []
        for case, arts, prompt in rng.choices(prompts, k=batch_size):
            term = noisy_term(case.prison_time, rng, noise, offsets)
            batch.append(encode_example(tokenizer, prompt, template_response(case, arts, term)))
        enc = collate(batch, tokenizer.pad_token_id)
        loss = trained_token_loss(model, enc["input_ids"], enc["attention_mask"], enc["labels"]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


# -----------------------------------------------------------------------------
# the base stage's entry point


def build_base(spec: TinyParams, data: DataParams, out: str | Path, seed: int, prompt: Prompt) -> dict:
    """Build, warm-start (on the sampling prompt, `prompt`) and save (atomically, safetensors) the tiny base to `out`;
    returns its metrics."""
    cases = training_cases(data.root)
    lookup = ArticleLookup(load_articles(data.train_articles), data.train_articles, data.strict_articles)
    tokenizer = build_tokenizer(corpus_texts(Path(data.root) / "training_set.json", data.train_articles, prompt),
                                spec.vocab_size, spec.max_position_embeddings)
    model = build_model(tokenizer, spec, seed)
    losses = warm_start(model, tokenizer, cases, lookup, prompt, steps=spec.warmup_steps,
                        batch_size=spec.warmup_batch_size, lr=spec.warmup_lr, noise=spec.term_noise, seed=seed,
                        offsets=spec.term_offsets)
    with files.atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {"base_kind": "tiny", "base_parameters": count_params(model), "base_vocab": len(tokenizer),
            "warmup_loss_first": round(losses[0], 4) if losses else None,
            "warmup_loss_last": round(losses[-1], 4) if losses else None}
