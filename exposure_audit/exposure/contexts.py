"""Which text each canary is scored after: the model's default, ``--context``, a chat role's
header (``--context-role``), or, for chat data and a tokenizer with a chat template, the context
the canary was trained in (the rendered conversation up to it, from the manifest's locations).

Order: ``--context`` overrides everything; then ``--context-role``; then the as-trained context
where the model has a chat template and the manifest's data is chat JSONL (``messages``); else
the model's default (its BOS token, or what its lines followed in training). The report's
``model.context`` says which was used (:meth:`Contexts.to_json`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.manifest import Manifest
from ..errors import AuditError
from ..models.chat import chat_tokenizer, message_context, role_context


@dataclass
class Contexts:
    mode: str  # "default" | "explicit" | "role" | "as-trained"
    default: str | None = None  # the context of every canary not in per_canary
    per_canary: dict[str, str] = field(default_factory=dict)  # canary id -> its as-trained context
    where: dict[str, dict[str, Any]] = field(default_factory=dict)  # canary id -> {"record", "message", "role"}
    role: str | None = None  # the role whose fresh-message header is the default (role, as-trained controls)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode in ("explicit", "role") or (self.mode == "as-trained" and self.default is not None):
            out["text"] = self.default
        if self.role is not None:
            out["role"] = self.role
        if self.where:
            out["canaries"] = self.where
        return out


def _chat_data(manifest: Manifest | None, data_folder: Path | None) -> Path | None:
    data = (manifest.data if manifest else None) or {}
    if data.get("format") != "jsonl" or data.get("field") != "messages" or data_folder is None:
        return None
    path = Path(data_folder) / "train.jsonl"
    return path if path.is_file() else None


def _records(path: Path, wanted: set[int]) -> dict[int, list[dict[str, Any]]]:
    """The messages of the wanted training records (record k is the k-th line: insert writes one a line)."""
    out: dict[int, list[dict[str, Any]]] = {}
    with open(path, "rb") as fh:
        k = 0
        for raw in fh:
            if not raw.strip():
                continue
            if k in wanted:
                try:
                    messages = json.loads(raw)["messages"]
                except (ValueError, KeyError, TypeError):
                    raise AuditError(f"{path} record {k} has no chat messages") from None
                out[k] = messages
            k += 1
    missing = sorted(wanted - set(out))
    if missing:
        raise AuditError(f"{path} has no record {missing[0]}: not the training data of this manifest")
    return out


def resolve_contexts(
    model: Any,
    manifest: Manifest | None = None,
    data_folder: Path | None = None,
    *,
    context: str | None = None,
    context_role: str | None = None,
) -> Contexts:
    """Each canary's context (see the module docstring); ``data_folder`` holds the manifest's train.jsonl."""
    if context is not None:
        return Contexts("explicit", default=context)
    tokenizer = chat_tokenizer(model)
    if context_role is not None:
        if tokenizer is None:
            raise AuditError("--context-role needs a tokenizer with a chat template; this model's has none")
        return Contexts("role", default=role_context(tokenizer, context_role), role=context_role)
    path = _chat_data(manifest, data_folder) if tokenizer is not None else None
    if path is None or manifest is None:
        return Contexts("default")
    firsts = {c.id: c.locations[0] for c in manifest.canaries if c.locations}
    records = _records(path, {int(loc["record"]) for loc in firsts.values()})
    out = Contexts("as-trained")
    for cid, loc in firsts.items():
        r, m, line = int(loc["record"]), int(loc.get("message", 0)), int(loc.get("line", 0))
        messages = records[r]
        where = f"record {r} of {path}"
        out.per_canary[cid] = message_context(tokenizer, messages, m, line, where)
        out.where[cid] = {"record": r, "message": m, "role": messages[m].get("role")}
    if len(firsts) < len(manifest.canaries):
        # Controls were never trained on: scored at the start of a fresh message of the role the
        # inserted canaries sat in most, the closest context they have.
        roles = Counter(w["role"] for w in out.where.values())
        out.role = roles.most_common(1)[0][0] if roles else "user"
        out.default = role_context(tokenizer, out.role)
    return out


__all__ = ["Contexts", "resolve_contexts"]
