"""Canary designs of `dp-audit` (``audit.canary``), pure: which secrets are planted, and how.

- ``random``: ``audit.format``'s secrets (``the random number is {d:9}``): digits, which the
  corpus is full of, so a planted and an unplanted canary differ in little but membership of
  one line among many similar ones. The line stays in the text stream (a group of 2 windows).
- ``new-token`` (Panda et al., "Privacy Auditing of Large Language Models", ICLR 2025): k fresh
  symbols, none of which occurs in the corpus, become k new tokens of the transformer's
  tokenizer and k new rows of its embedding and output layer. A canary is a line of
  ``canary_length`` of them; with the default k = canaries x length every canary has its own
  symbols, so an unplanted canary's tokens occur nowhere in the training data and a planted
  one's occur in its one line only: what separates them is membership alone.
- ``new-char``: the char-LSTM's counterpart. Its tokens are characters, so a fresh token is a
  character absent from the corpus; each gets its own row of the vocabulary (the vocabulary is
  built from the training text *and* the canary formats, so unplanted canaries' characters get
  rows too, never trained). Same layout as ``new-token``.

The fresh symbols are Unicode private-use characters (U+E000.., then plane 15), a contiguous
block none of which the corpus uses, so the canaries are ordinary lines of text to every tool
that reads the data folder, and the format language describes them: ``{[lo-hi]:length}``.
Which canary gets which symbols is drawn from the run's seed (recorded in the manifest).

Designed canaries are kept to one training window each by default (``one_window``): training
cuts every planted canary line out of the text stream and gives it a window of its own (the
line after the text that preceded it), so its tokens are in exactly one example and the claim
compared is the accountant's per-window epsilon, not a group's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import AuditError

DESIGNS = ("random", "new-token", "new-char")
# What fills a planted canary's own window: the text that preceded it, or the canary line
# repeated (one example either way, so the same per-window claim; repeated, the window's whole
# clipped gradient is about the canary, which is what DP-SGD's noise has to hide)
WINDOW_FILLS = ("context", "repeat")
# How fresh tokens' rows start: drawn each on its own ("random"), or all from one draw ("alike",
# so no canary starts more or less likely than another and only training tells them apart)
FRESH_INITS = ("random", "alike")
# Where fresh symbols come from: the private-use areas (never assigned a meaning by Unicode).
PRIVATE_USE = ((0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD))
MAX_FRESH = sum(hi - lo + 1 for lo, hi in PRIVATE_USE)


@dataclass(frozen=True)
class Design:
    """What ``audit.canary`` and its settings resolve to."""

    name: str
    format: str  # the canaries' format (for new-token/new-char: a hole over the fresh symbols)
    fresh: str  # the fresh symbols, in order ("" for random)
    one_window: bool  # each planted canary in one training window (the per-window claim)
    window_fill: str = "context"  # what else its window holds (WINDOW_FILLS)
    fresh_init: str = "random"  # how the fresh tokens' rows start (FRESH_INITS)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"canary": self.name, "format": self.format, "one_window": self.one_window}
        if self.one_window:
            out["window_fill"] = self.window_fill
        if self.fresh:
            out["fresh_init"] = self.fresh_init
            out.update(
                fresh_tokens=len(self.fresh),
                fresh_first=f"U+{ord(self.fresh[0]):04X}",
                fresh_last=f"U+{ord(self.fresh[-1]):04X}",
            )
        return out


def fresh_block(k: int, used: Iterable[str]) -> str:
    """k consecutive private-use characters, none of them in ``used`` (the corpus's characters)."""
    if k < 1:
        raise AuditError(f"audit.fresh_tokens: {k} is not a positive count")
    if k > MAX_FRESH:
        raise AuditError(f"audit.fresh_tokens: {k} fresh symbols do not fit the {MAX_FRESH} private-use characters")
    taken = {ord(c) for c in used}
    for lo, hi in PRIVATE_USE:
        start = lo
        while start + k - 1 <= hi:
            clash = [p for p in range(start, start + k) if p in taken]
            if not clash:
                return "".join(chr(p) for p in range(start, start + k))
            start = clash[-1] + 1
    raise AuditError(f"audit.fresh_tokens: the corpus leaves no block of {k} unused private-use characters")


def _escape(c: str) -> str:
    return "\\" + c if c in "\\-[]{}" else c


def resolve(
    name: str,
    *,
    fmt: str,
    canaries: int,
    fresh_tokens: int | None,
    canary_length: int,
    one_window: bool | None,
    model_kind: str,
    corpus_chars: Iterable[str] = (),
    window_fill: str = "context",
    fresh_init: str = "random",
) -> Design:
    """The design of ``audit.canary`` for a model of ``model_kind``; bad combinations are one-line errors."""
    if name not in DESIGNS:
        raise AuditError(f"audit.canary: {name!r} is not one of {', '.join(DESIGNS)}")
    if name == "random":
        return Design("random", fmt, "", bool(one_window), window_fill)
    from ..models import registry  # which kinds take which fresh symbols (Kind.fresh)

    fits = {k.name: k.fresh for k in registry.kinds()}
    if name == "new-token" and fits.get(model_kind) != "new-token":
        token_kinds = ", ".join(k for k, f in fits.items() if f == "new-token")
        raise AuditError(
            f"audit.canary: new-token needs a model with a tokenizer (model.kind: {token_kinds}); "
            f"a {model_kind} has none: its counterpart is new-char (characters absent from the corpus)"
        )
    if name == "new-char" and fits.get(model_kind) != "new-char":
        owner = " or ".join(k.label for k in registry.kinds() if k.fresh == "new-char")
        raise AuditError(f"audit.canary: new-char is the {owner}'s design; a {model_kind} reads tokens: use new-token")
    if canary_length < 1:
        raise AuditError(f"audit.canary_length: {canary_length} is not a positive length")
    k = fresh_tokens if fresh_tokens is not None else canaries * canary_length
    if k**canary_length < canaries:
        raise AuditError(
            f"audit.fresh_tokens: {k} fresh tokens make only {k**canary_length} canaries of length "
            f"{canary_length}, fewer than audit.canaries = {canaries}"
        )
    fresh = fresh_block(k, corpus_chars)
    body = _escape(fresh[0]) if k == 1 else f"{_escape(fresh[0])}-{_escape(fresh[-1])}"
    one = True if one_window is None else one_window
    return Design(name, f"{{[{body}]:{canary_length}}}", fresh, one, window_fill, fresh_init)


def fresh_of(design: dict[str, object] | None) -> str:
    """The fresh symbols recorded in a manifest's ``settings.dp_audit`` (\"\" if none)."""
    if not design or not design.get("fresh_tokens"):
        return ""
    lo, hi = (int(str(design[k])[2:], 16) for k in ("fresh_first", "fresh_last"))
    return "".join(chr(p) for p in range(lo, hi + 1))
