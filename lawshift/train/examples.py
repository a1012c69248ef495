"""Completion-only training examples: the prompt is context, the answer and its closing eos are the target.

Shared by the tiny base's warm-start and by the SFT stage, so both train exactly the same objective shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # label value the loss skips (prompt and padding positions)


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    weight: float = 1.0
    group: str = ""  # the training case the answer belongs to

    def __len__(self) -> int:
        return len(self.input_ids)


def end_of_turn_id(tokenizer) -> int:
    """The token that closes the assistant turn: `<|im_end|>` in ChatML, else the tokenizer's eos."""
    tid = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(tid, int) and tid != tokenizer.unk_token_id:
        return tid
    return tokenizer.eos_token_id


def encode_example(tokenizer, prompt: str, response: str, weight: float = 1.0, group: str = "") -> Example:
    """Tokenize prompt and response separately so the boundary is exact, then mask the prompt.

    Tokenizing separately matters: BPE merges across the prompt/answer boundary would otherwise move the
    boundary by a token and leak a prompt token into the labels (or drop an answer token from them).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]
    return Example(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids, weight, group)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding positions are masked out of attention and loss."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e)] = torch.tensor(e.input_ids)
        labels[i, : len(e)] = torch.tensor(e.labels)
        mask[i, : len(e)] = 1
    weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def trained_token_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """`per_sequence_loss(model(...).logits, labels)` with the LM head run on the trained positions only.

    For a small-vocabulary model on long prompts the LM head over every position is most of a step's work, and the
    prompt positions' logits are thrown away by the loss; here the decoder's hidden states are taken first and only
    those that predict a trained label go through the head. Same value up to float rounding
    (tests/train/test_examples.py).
    """
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][mask]).float()
    tok = torch.nn.functional.cross_entropy(logits, shift_labels[mask], reduction="none")
    per_position = torch.zeros(mask.shape, dtype=tok.dtype, device=tok.device).masked_scatter(mask, tok)
    return per_position.sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def per_sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy of each sequence over its trained (non-masked) positions. Shape [batch]."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE,
                                            reduction="none")
    mask = (shift_labels != IGNORE).float()
    return (tok * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
