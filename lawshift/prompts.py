"""Prompts: the judge instruction, the articles and the fact, rendered through the tokenizer's chat template.

The same builder serves the training prompts (rejection sampling, SFT) and LawShift's two splits. For the
poisoned split it can show the old statute beside the new one (`eval.show_old_statute`).
"""

from __future__ import annotations

from collections.abc import Sequence

SYSTEM_PROMPT = (
    "你是一名中国刑事法官。请根据给出的法条和案件事实作出判决。"
    "先在<think></think>中简要推理，再在<answer></answer>中给出结论："
    "构成犯罪时写“罪名 | 刑期”，刑期为月数（只写数字），无期徒刑或死刑写 XT；"
    "不构成犯罪时写“不违规”。"
)


def render_articles(articles: Sequence[tuple[str, str]]) -> str:
    """One article per line as `【id】text`."""
    return "\n".join(f"【{art_id}】{text}" for art_id, text in articles)


def user_prompt(fact: str, articles: Sequence[tuple[str, str]],
                old_articles: Sequence[tuple[str, str]] | None = None) -> str:
    if old_articles is None:
        law = f"法条：\n{render_articles(articles)}"
    else:
        # Old and new side by side: the model is told which text is in force.
        law = f"修改前法条：\n{render_articles(old_articles)}\n修改后法条（现行有效）：\n{render_articles(articles)}"
    return f"{law}\n\n案件事实：\n{fact}"


def build_messages(fact: str, articles: Sequence[tuple[str, str]],
                   old_articles: Sequence[tuple[str, str]] | None = None) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(fact, articles, old_articles)}]


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The text the model continues: chat template plus the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
