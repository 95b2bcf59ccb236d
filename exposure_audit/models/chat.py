"""A model's chat template, for the audits that need a chat record's text as the model was trained
on it (scan's contexts). Only the tokenizer's own template is used; none is made up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import AuditError


def chat_renderer(model: Any) -> Callable[[list[dict[str, Any]]], str] | None:
    """``messages -> text`` through the model's tokenizer's chat template, or None where the
    model has none (a char-LSTM, a tokenizer without a template)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or not getattr(tok, "chat_template", None):
        return None

    def render(messages: list[dict[str, Any]]) -> str:
        try:
            return tok.apply_chat_template(messages, tokenize=False)
        except Exception as e:  # a template's own errors (jinja raises its own exception types)
            raise AuditError(f"the model's chat template cannot render a record: {str(e).splitlines()[0]}") from None

    return render
