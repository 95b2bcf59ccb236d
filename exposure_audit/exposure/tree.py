"""A format compiled for one model: the tree of token sequences that spell its candidates.

Every candidate line of a format (``context`` + fixed text + secret + fixed text + newline) is
reached by walking the model's tokens. Which tokens may follow depends only on how far into the
line a prefix is, its *position*: the next character's slot and, for a token that ended inside a
multi-byte character, the bytes of that character read so far. A token may follow if every byte
it spells stays consistent with the format (fixed text exactly, a hole character within its
class). Costs are sums of ``-log2 p >= 0``, so pruning and best-first search stay exact.

For a character model each token is one character, every text has exactly one path, and the
tree is the format's character tree. For a subword model a text has many paths (``"123"`` as
one token or as ``"1" "23"``...). Only the *canonical* one, the tokenizer's own encoding, is a
candidate: the walk visits the others (they cost model steps) but a leaf counts only if
re-encoding its text gives its own tokens (:meth:`CompiledFormat.canonical_mask`). A subword
tree whose every token spells one whole character, no two the same one (split digits on a digit
format), has one path per text like a character model's: that path is the canonical one, and
the tree is not ``ambiguous`` (no re-encoding).

The first tokens of context + line are the same for every candidate (the context, then the
fixed text before the first hole as the tokenizer splits it): they are read once (``shared``)
and the tree starts after them. They are the longest token prefix that the canonical encodings
of probes share (every character of the first hole's class, the canaries, random fillings),
shortened until it ends where no token of the vocabulary can straddle: a BPE tokenizer never
merges across such a boundary, so no candidate's encoding can differ before it. Tokens that lie
wholly in the context cost nothing (a token straddling context and line counts for the line).

Details: docs/method.md.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.formats import Format
from ..errors import AuditError
from ..models.base import NEWLINE, LanguageModel, Scorer, State

INDEX_LIMIT = 1 << 62  # partial indices are tracked in int64 while the space fits
PROBES = 64  # random fillings used, with the first hole's alphabet and the canaries, to find the shared tokens


class _Trie:
    """The model's vocabulary as a byte trie: ``children[node][byte] -> node``, ``tokens[node]``."""

    def __init__(self, table: Sequence[bytes | None]) -> None:
        self.children: list[dict[int, int]] = [{}]
        self.tokens: list[list[int]] = [[]]
        for tok, spelled in enumerate(table):
            if not spelled:
                continue  # not text (special tokens, the unknown symbol) or empty
            node = 0
            for b in spelled:
                nxt = self.children[node].get(b)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][b] = nxt
                    self.children.append({})
                    self.tokens.append([])
                node = nxt
            self.tokens[node].append(tok)


_TRIES: weakref.WeakKeyDictionary[Any, _Trie] = weakref.WeakKeyDictionary()


def _trie(model: LanguageModel) -> _Trie:
    trie = _TRIES.get(model)
    if trie is None:
        trie = _TRIES[model] = _Trie(model.token_bytes())
    return trie


@dataclass
class Edges:
    """The tokens that may follow a position: ``ids``, the position each leads to (``next``), how
    each updates a node's partial index over the hole characters (``index * mult + add``), and
    ``free``: None, or a mask of the tokens that lie wholly in the context (they cost nothing:
    only tokens holding a character of the line count). ``cols``: where each token's
    log2-probability lies in a row of the walks' ``logp``, which hold only the compiled format's
    ``columns`` (:meth:`CompiledFormat.cols_of`)."""

    ids: torch.Tensor
    next: torch.Tensor
    mult: torch.Tensor
    add: torch.Tensor
    free: torch.Tensor | None = None
    cols: torch.Tensor | None = None

    def bits(self, logp: torch.Tensor) -> torch.Tensor:
        """``[n, k]`` cost in bits of each edge from rows with the format's columns of next-token
        log2-probabilities ``logp``."""
        out = -logp[:, self.cols].double()
        if self.free is not None:
            out[:, self.free] = 0.0
        return out

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class _Slot:
    encodings: dict[bytes, int]  # UTF-8 bytes of each allowed character -> its digit (0 for fixed text)
    radix: int  # alphabet size for a hole character, 1 for fixed text
    partials: set[bytes] = field(default_factory=set)  # proper prefixes of the encodings


@dataclass
class CompiledFormat:
    """A format compiled for one model (see the module docstring)."""

    fmt: Format
    model: LanguageModel
    context: str | None
    state: State  # after the context and the shared tokens (one row)
    logp: torch.Tensor  # [1, len(columns)] log2-probabilities of the first token of the tree, at ``columns``
    base_cost: float  # bits of the shared tokens that hold line characters (the context's are never counted)
    shared: list[int]  # the tokens of context + line read before the tree (the same for every candidate)
    head: bytes  # what the shared tokens spell (special tokens such as BOS spell nothing)
    lead: int  # characters of context before the line in ``head`` + the tree's text
    context_bytes: int  # UTF-8 bytes of that context
    edges: list[Edges]  # per position; position 0 is the root, ``end`` the closing newline's end
    end: int
    leaves_below: list[int]  # candidates under a node at each position (an upper bound for subword trees)
    prefix_steps: int
    path_tokens: int  # tokens after the shared ones in one candidate's canonical path (brute-force cost)
    ambiguous: bool  # several token paths can spell one text: leaves need the canonical check
    track_index: bool
    terminator: str = NEWLINE  # what closes every candidate: a canary's newline; scan: the value's next character or ""
    # every token an edge of the tree holds, sorted: the walks step the model for these columns alone
    columns: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def cols_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Where tokens ``ids`` (of the tree's edges) lie among ``columns``."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        cols = torch.searchsorted(self.columns, ids).clamp_(max=max(int(self.columns.shape[0]) - 1, 0))
        if not bool((self.columns[cols] == ids).all()):
            raise RuntimeError("a token path left the format's tree")  # compile_format checks probes' paths
        return cols

    def tree_steps(self) -> int:
        """Model steps to walk the whole tree: one per node that is neither the root nor a leaf."""
        paths = [0] * (self.end + 1)
        paths[0] = 1
        for p in range(self.end):  # positions are numbered in order of the characters they reach
            if paths[p]:
                for q in self.edges[p].next.tolist():
                    paths[q] += paths[p]
        return sum(paths[1 : self.end])

    # -- candidates <-> token paths ------------------------------------------------------
    def _paths(self, texts: Sequence[str]) -> list[list[int] | None]:
        """Canonical tokens of context + each text after the shared ones (None: not after them)."""
        n = len(self.shared)
        out: list[list[int] | None] = []
        for ctx, line in self.model.encode_lines(list(texts), self.context, self.terminator):
            full = ctx + line
            out.append(full[n:] if full[:n] == self.shared else None)
        return out

    def line_ids(self, secrets: Sequence[str]) -> list[list[int]]:
        """Canonical token paths of the candidates with these secrets, after the shared tokens."""
        texts = [self.fmt.render(s) for s in secrets]
        out = []
        for text, path in zip(texts, self._paths(texts)):
            if path is None:
                raise AuditError(
                    f"format {self.fmt.source!r}: the tokenizer splits the fixed text of {text!r} unlike other "
                    "candidates; cannot rank it exactly"
                )
            out.append(path)
        return out

    def free_tokens(self, paths: Sequence[Sequence[int]]) -> list[int] | None:
        """How many leading tokens of each path lie wholly in the context (None: none can)."""
        budget = self.context_bytes - len(self.head)  # context bytes the shared tokens left unread
        if budget <= 0:
            return None
        table = self.model.token_bytes()
        out = []
        for p in paths:
            used = k = 0
            while k < len(p) and used + len(table[p[k]] or b"") <= budget:
                used += len(table[p[k]] or b"")
                k += 1
            out.append(k)
        return out

    def text_of(self, path: Sequence[int]) -> str:
        """The candidate line (without its newline) that a complete path spells."""
        text = (self.head + _spelled(self.model, path)).decode("utf-8")
        return text[self.lead : len(text) - len(self.terminator)]

    def canonical_mask(self, paths: Sequence[Sequence[int]]) -> np.ndarray:
        """For complete paths: which are the canonical tokenization of their text."""
        if not self.ambiguous or not paths:
            return np.ones(len(paths), dtype=bool)
        got = self._paths([self.text_of(p) for p in paths])
        return np.array([g == list(p) for g, p in zip(got, paths)], dtype=bool)


def _spelled(model: LanguageModel, ids: Sequence[int]) -> bytes:
    """What tokens spell, special tokens (BOS) spelling nothing."""
    table = model.token_bytes()
    return b"".join(table[i] or b"" for i in ids)


def _slots(fmt: Format, lead: str, terminator: str = NEWLINE) -> list[_Slot]:
    """Every character of ``lead + line + terminator`` (lead: the end of the context) as a slot."""
    hole = set(fmt.hole_slots)
    out = [_Slot({c.encode(): 0}, 1) for c in lead]
    for i, chars in enumerate(list(fmt.slots) + list(terminator)):
        if i in hole:
            out.append(_Slot({c.encode(): d for d, c in enumerate(chars)}, len(chars)))
        else:
            out.append(_Slot({chars.encode(): 0}, 1))
    for s in out:
        s.partials = {e[:j] for e in s.encodings for j in range(1, len(e))}
    return out


def _build_edges(
    trie: _Trie, slots: list[_Slot], first: int, lead: int, track: bool
) -> tuple[list[Edges], int, list[int], bool]:
    """Positions reachable from slot ``first`` and the tokens leaving each (depth-first over the
    trie). Slots before ``lead`` are the context's: a token ending there costs nothing. ``track``:
    keep each edge's index arithmetic (``mult``, ``add``); without it (a space of 2^62 or more
    fillings) they are zeros, as a token spanning many slots can step over more than 2^63."""
    n = len(slots)
    single = True  # every token of the tree spells one whole character, no two the same one
    index: dict[tuple[int, bytes], int] = {(first, b""): 0}
    order: list[tuple[int, bytes]] = [(first, b"")]
    raw: list[list[tuple[int, tuple[int, bytes], int, int]]] = []
    k = 0
    while k < len(order):
        i0, part0 = order[k]
        k += 1
        found: list[tuple[int, tuple[int, bytes], int, int]] = []
        stack = [(0, i0, part0, 1, 0)]
        while stack:
            node, i, part, mult, add = stack.pop()
            for byte, child in trie.children[node].items():
                if i >= n:
                    continue
                cur = part + bytes((byte,))
                slot = slots[i]
                digit = slot.encodings.get(cur)
                if digit is not None:
                    nxt = (i + 1, b"", mult * slot.radix, add * slot.radix + digit)
                elif cur in slot.partials:
                    nxt = (i, cur, mult, add)
                else:
                    continue
                for tok in trie.tokens[child]:
                    found.append((tok, nxt[:2], nxt[2], nxt[3]))
                if trie.tokens[child] and (nxt[:2] != (i0 + 1, b"") or len(trie.tokens[child]) > 1):
                    single = False  # a token spans several characters (or part of one), or two spell the same
                stack.append((child, *nxt))
        for _, pos, _, _ in found:
            if pos not in index and pos != (n, b""):
                index[pos] = len(order)
                order.append(pos)
        raw.append(found)
    # number positions by how far they reach, so every edge goes forward (tree_steps relies on it)
    ranked = sorted(range(len(order)), key=lambda j: (order[j][0], len(order[j][1])))
    new = {old: r for r, old in enumerate(ranked)}
    end = len(order)
    edges: list[Edges] = [None] * len(order)  # type: ignore[list-item]
    for old, found in enumerate(raw):
        found.sort(key=lambda e: (e[3], e[0]))  # a character model's children in alphabet order
        nxt = [end if pos == (n, b"") else new[index[pos]] for _, pos, _, _ in found]
        free = [(pos[0], len(pos[1])) <= (lead, 0) for _, pos, _, _ in found]
        edges[new[old]] = Edges(
            ids=torch.as_tensor([e[0] for e in found], dtype=torch.long),
            next=torch.as_tensor(nxt, dtype=torch.long),
            mult=torch.as_tensor([e[2] if track else 0 for e in found], dtype=torch.long),
            add=torch.as_tensor([e[3] if track else 0 for e in found], dtype=torch.long),
            free=torch.as_tensor(free, dtype=torch.bool) if any(free) else None,
        )
    radices = [s.radix for s in slots]
    below_slot = [1] * (n + 1)
    for i in range(n - 1, -1, -1):
        below_slot[i] = below_slot[i + 1] * radices[i]
    leaves_below = [below_slot[order[old][0]] for old in ranked] + [1]
    return edges, end, leaves_below, single


def check_format(model: LanguageModel, fmt: Format, terminator: str = NEWLINE) -> None:
    """Error unless the model's tokens can spell every character the format can contain."""
    trie = _trie(model)
    first_bytes = set(trie.children[0])
    for c in sorted(fmt.characters | set(terminator)):
        b = c.encode()
        # a character is producible if a token starts with its bytes or its first byte starts a token
        if b[0] not in first_bytes:
            what = "the line break" if c == NEWLINE else f"character {c!r}"
            raise AuditError(
                f"format {fmt.source!r}: {what} is missing from the model's vocabulary (no token spells it)"
            )


def _straddles(trie: _Trie, text: bytes, end: int, after: _Slot) -> bool:
    """Whether some token spells bytes of ``text`` before ``end`` and continues into a character
    that the slot at ``end`` allows."""
    for start in range(end - 1, -1, -1):
        node: int | None = 0
        for b in text[start:end]:
            node = trie.children[node].get(b)
            if node is None:
                break
        if node is None:
            continue
        for b in trie.children[node]:
            first = bytes((b,))
            if first in after.encodings or first in after.partials:
                return True
    return False


def _probes(fmt: Format, canaries: Sequence[str], seed: int) -> list[str]:
    """Secrets that vary every character of the first hole and, at random, all the others."""
    rng = random.Random(f"exposure-audit:{seed}:probes:{fmt.source}")
    first = fmt.radices[0]
    out = list(canaries)
    for c in first[:256]:
        rest = fmt.fill(rng.randrange(fmt.space_size))
        out.append(c + rest[1:])
    out.extend(fmt.sample(rng, min(PROBES, fmt.space_size), distinct=False))
    return out


def compile_format(
    scorer: Scorer,
    fmt: Format,
    context: str | None = None,
    *,
    canaries: Sequence[str] = (),
    seed: int = 0,
    terminator: str = NEWLINE,
) -> CompiledFormat:
    """Read the context and the shared tokens once; build the tree of the rest of the line.
    ``terminator`` closes every candidate (a canary's newline; a found secret's next character,
    or nothing: docs/method.md)."""
    model = scorer.model
    check_format(model, fmt, terminator)
    trie = _trie(model)
    secrets = _probes(fmt, canaries, seed)
    texts = [fmt.render(s) for s in secrets]
    fulls = [ctx + line for ctx, line in model.encode_lines(texts, context, terminator)]
    # every probe must spell (the context) + text + newline, the context the same for all
    spelled = [_spelled(model, f) for f in fulls]
    wants = [(t + terminator).encode() for t in texts]
    if any(not sp.endswith(w) for sp, w in zip(spelled, wants)):
        raise AuditError("the tokenizer does not spell a line back as itself; this tokenizer is not supported")
    ctx_bytes = {sp[: len(sp) - len(w)] for sp, w in zip(spelled, wants)}
    if len(ctx_bytes) != 1:
        raise AuditError("the tokenizer spells the context differently before different lines; not supported")
    ctx_text = ctx_bytes.pop().decode("utf-8")
    # The tokens read once: the longest token prefix every probe shares (usually the context,
    # then the line's fixed text up to the first hole), shortened until it ends on a character
    # boundary that no token of the vocabulary can straddle. A BPE tokenizer never merges across
    # such a boundary, so every candidate's canonical tokenization starts with these tokens.
    slots = _slots(fmt, ctx_text, terminator)
    fixed = (ctx_text + fmt.prefix).encode()
    shared: list[int] = []
    for j, tok in enumerate(fulls[0]):
        if any(len(f) <= j or f[j] != tok for f in fulls) or len(_spelled(model, fulls[0][: j + 1])) > len(fixed):
            break
        shared.append(tok)
    while shared:
        end = len(_spelled(model, shared))
        try:
            chars = len(fixed[:end].decode("utf-8", "strict"))
        except UnicodeDecodeError:
            shared.pop()
            continue
        if not _straddles(trie, fixed, end, slots[chars]):
            break
        shared.pop()
    head = _spelled(model, shared)
    # the shared tokens that lie wholly in the context are read at once and cost nothing
    in_context = 0
    while in_context < len(shared) and len(_spelled(model, shared[: in_context + 1])) <= len(ctx_text.encode()):
        in_context += 1
    if in_context == 0:
        raise AuditError(
            f"format {fmt.source!r}: the context merges with the start of the line into one token, leaving no "
            "context to read first; use a longer context or the model's default"
        )
    lead = len(ctx_text)
    first = len(head.decode("utf-8"))
    track_index = fmt.space_size < INDEX_LIMIT
    edges, end, leaves_below, single = _build_edges(trie, slots, first, lead, track_index)

    columns = torch.unique(torch.cat([e.ids for e in edges]))  # sorted
    for e in edges:
        e.cols = torch.searchsorted(columns, e.ids)

    steps0 = scorer.steps
    state, logp = scorer.start(shared[:in_context])
    cost = 0.0
    for tok in shared[in_context:]:
        cost += -float(logp[0, tok])
        state, logp = scorer.step(state, torch.tensor([tok]))
    compiled = CompiledFormat(
        fmt=fmt,
        model=model,
        context=context,
        state=state,
        logp=logp[:, columns],
        base_cost=cost,
        shared=shared,
        head=head,
        lead=lead,
        context_bytes=len(ctx_text.encode()),
        edges=edges,
        end=end,
        leaves_below=leaves_below,
        prefix_steps=scorer.steps - steps0,
        path_tokens=len(fulls[0]) - len(shared),
        ambiguous=not single,
        track_index=track_index,
        terminator=terminator,
        columns=columns,
    )
    _check_paths(compiled, [f[len(shared) :] for f in fulls], texts)
    return compiled


def _check_paths(cf: CompiledFormat, paths: Sequence[Sequence[int]], texts: Sequence[str]) -> None:
    """Every probe's canonical path must be a path of the tree (else the tree would miss candidates)."""
    for path, text in zip(paths, texts):
        pos = 0
        for tok in path:
            e = cf.edges[pos] if pos < cf.end else None
            hit = (e.ids == tok).nonzero() if e is not None else []
            if len(hit) == 0:
                raise AuditError(
                    f"format {cf.fmt.source!r}: the canonical tokens of {text!r} leave the format's tree; "
                    "this tokenizer is not supported"
                )
            pos = int(e.next[int(hit[0])])
        if pos != cf.end:
            raise AuditError(f"format {cf.fmt.source!r}: the canonical tokens of {text!r} end early")
