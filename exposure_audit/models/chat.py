"""Chat templates: the text a model saw before a canary planted inside a chat message.

A tokenizer's chat template (Jinja, ``tokenizer.chat_template``) renders a conversation into the
text the model is trained on (``apply_chat_template(messages, tokenize=False)``, as TRL does).
A canary planted as line ``L`` of message ``M`` of a record was therefore read after the rendered
conversation up to it: the template's output for messages ``0..M-1``, then message ``M``'s turn
header (``<|im_start|>assistant\\n``...), then the message's lines before ``L``.

That prefix is found by rendering messages ``0..M`` with message ``M``'s content replaced by a
marker and cutting at the marker; so the template must render a conversation's prefix as the
start of the whole (templates that only wrap each message do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import AuditError

MARKER = "\u27e6exposure-audit:canary\u27e7"  # text no template adds and no data holds


def chat_tokenizer(model: Any) -> Any | None:
    """The model's tokenizer if it carries a chat template, else None."""
    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer if getattr(tokenizer, "chat_template", None) else None


def render(tokenizer: Any, messages: Sequence[dict[str, Any]], where: str) -> str:
    """The conversation as the template renders it for training; a template error names ``where``."""
    try:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=False)
    except Exception as e:  # jinja2 raises TemplateError subclasses and whatever a template's raise_exception says
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise AuditError(f"the chat template fails to render {where} ({first})") from None
    if not isinstance(text, str):
        raise AuditError(f"the chat template renders {where} as {type(text).__name__}, not text")
    return text


def _before_marker(tokenizer: Any, messages: list[dict[str, Any]], where: str) -> str:
    text = render(tokenizer, messages, where)
    if text.count(MARKER) != 1:
        raise AuditError(f"the chat template does not render the content of {where} exactly once")
    return text[: text.index(MARKER)]


def message_context(tokenizer: Any, messages: Sequence[dict[str, Any]], index: int, line: int, where: str) -> str:
    """The text before line ``line`` of message ``index``: the rendered conversation up to it."""
    if not 0 <= index < len(messages):
        raise AuditError(f"{where}: no message {index} (the record has {len(messages)})")
    head = [dict(m) for m in messages[:index]] + [{**messages[index], "content": MARKER}]
    content = messages[index].get("content", "")
    lines = content.split("\n")
    if line > len(lines):
        raise AuditError(f"{where}: message {index} has no line {line}")
    return _before_marker(tokenizer, head, where) + "".join(f"{ln}\n" for ln in lines[:line])


def role_context(tokenizer: Any, role: str) -> str:
    """The template's header for a fresh message of ``role``: what a canary at its start follows."""
    return _before_marker(tokenizer, [{"role": role, "content": MARKER}], f"a {role!r} message")


__all__ = ["MARKER", "chat_renderer", "chat_tokenizer", "encode_chat", "message_context", "render", "role_context"]


def encode_chat(tokenizer: Any, records: Any) -> tuple[Any, int]:
    """Token ids and characters of chat records rendered through the tokenizer's chat template,
    as TRL trains on them: each record's ``messages`` rendered, then encoded (no special tokens
    added: the template writes its own). ``records`` yields ``(messages, where)``."""
    import numpy as np

    out: list[np.ndarray] = []
    chars = 0
    for messages, where in records:
        text = render(tokenizer, messages, where)
        chars += len(text)
        out.append(np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32))
    return (np.concatenate(out) if out else np.zeros(0, dtype=np.int32)), chars


def chat_renderer(model: Any) -> Callable[[list[dict[str, Any]]], str] | None:
    """``messages -> text`` through the model's own chat template (none is made up), for the
    audits that need a chat record's text as trained (scan's contexts); None where the model has
    no template (a char-LSTM, a tokenizer without one)."""
    tokenizer = chat_tokenizer(model)
    if tokenizer is None:
        return None
    return lambda messages: render(tokenizer, messages, "a record")
