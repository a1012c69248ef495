"""Prompts: a judge prompt file (system text, user template, article line), rendered through the chat template.

The prompt is data, not code: `sample.prompt` and `eval.prompt` name a YAML file (the default: prompts/judge.yaml,
whose comments describe the keys), so `dvc exp run -S eval.prompt=prompts/other.yaml` compares prompts and a
published setup is reproduced by writing its prompt into a file. The same file serves the training prompts
(rejection sampling, SFT) and LawShift's two splits; for the poisoned split it can show the old statute beside
the new one (`eval.show_old_statute`, template `user_with_old_statute`).

    prompt = load_prompt("prompts/judge.yaml")
    text = render_prompt(tokenizer, prompt.messages(fact, [("354-0-0", "…")]))
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import yaml

from lawshift.core.files import InputError, read_text

DEFAULT_PROMPT = "prompts/judge.yaml"
LENGTH_CHUNK = 256  # prompts per tokenizer call when only their lengths are wanted (`token_lengths`)

# The placeholders each template takes, and the ones it must use: a user template without {fact} would ask every
# case the same question, silently.
PLACEHOLDERS = {
    "user": ({"fact", "articles"}, {"fact", "articles"}),
    "user_with_old_statute": ({"fact", "articles", "old_articles"}, {"fact", "articles", "old_articles"}),
    "article": ({"id", "text"}, {"text"}),
}
REQUIRED = ("system", "user")
DEFAULTS = {"article": "【{id}】{text}"}
# Only `{name}` of a known placeholder is replaced, in one pass: any other brace is literal text (worked examples
# may quote JSON), and a fact that happens to contain `{articles}` is not expanded again.
NAMES = ("fact", "articles", "old_articles", "id", "text")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(NAMES) + r")\}")


def fill(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str
    user_with_old_statute: str | None = None
    article: str = DEFAULTS["article"]
    source: str = DEFAULT_PROMPT  # the file it came from, for error messages

    def render_articles(self, articles: Sequence[tuple[str, str]]) -> str:
        """One article per line, as the `article` template writes it."""
        return "\n".join(fill(self.article, {"id": art_id, "text": text}) for art_id, text in articles)

    def user_message(self, fact: str, articles: Sequence[tuple[str, str]],
                     old_articles: Sequence[tuple[str, str]] | None = None) -> str:
        values = {"fact": fact, "articles": self.render_articles(articles)}
        if old_articles is None:
            return fill(self.user, values)
        if self.user_with_old_statute is None:
            raise InputError(self.source, "eval.show_old_statute needs a user_with_old_statute template",
                             field="user_with_old_statute")
        # Old and new side by side: the template tells the model which text is in force.
        return fill(self.user_with_old_statute, {**values, "old_articles": self.render_articles(old_articles)})

    def messages(self, fact: str, articles: Sequence[tuple[str, str]],
                 old_articles: Sequence[tuple[str, str]] | None = None) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user_message(fact, articles, old_articles)}]


def prompt_from_dict(raw: object, source: str) -> Prompt:
    """Validate a prompt file's mapping: known keys, strings, and each template's placeholders."""
    if not isinstance(raw, dict):
        raise InputError(source, "expected a mapping with keys system, user (and optionally user_with_old_statute, "
                                 "article)")
    known = set(REQUIRED) | set(PLACEHOLDERS)
    for key, value in raw.items():
        if key not in known:
            raise InputError(source, f"unknown key; expected one of {sorted(known)}", field=str(key))
        if not isinstance(value, str):
            raise InputError(source, f"must be a string, got {type(value).__name__}", field=key)
    for key in REQUIRED:
        if key not in raw:
            raise InputError(source, "missing", field=key)
    for key, (allowed, needed) in PLACEHOLDERS.items():
        if key not in raw:
            continue
        used = set(re.findall(r"\{(\w+)\}", raw[key]))
        if missing := needed - used:
            raise InputError(source, f"the template must use {{{'}, {'.join(sorted(missing))}}}", field=key)
        if stray := (used & set(NAMES)) - allowed:
            raise InputError(source, f"placeholder {{{'}, {'.join(sorted(stray))}}} is not filled here", field=key)
    return Prompt(**{**DEFAULTS, **raw}, source=source)


def load_prompt(path: str | Path) -> Prompt:
    """A prompt file (yaml.safe_load), validated; an InputError naming the file and key if it is not usable."""
    try:
        raw = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        raise InputError(path, f"invalid YAML: {' '.join(str(err).split())}") from None
    return prompt_from_dict(raw, str(path))


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The text the model continues: chat template plus the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def token_lengths(tokenizer, texts: Iterable[str], chunk: int = 0) -> list[int]:
    """Each text's length in tokens, no special tokens added (a rendered prompt has them). The tokenizer gets `chunk`
    texts per call (0: LENGTH_CHUNK) and only the lengths are kept: a whole run's token lists held ~45 KB a prompt."""
    texts, lengths, chunk = iter(texts), [], chunk or LENGTH_CHUNK
    while part := list(islice(texts, chunk)):
        lengths += [len(ids) for ids in tokenizer(part, add_special_tokens=False)["input_ids"]]
    return lengths
