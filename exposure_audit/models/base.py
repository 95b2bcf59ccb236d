"""The model interface and a step counter shared by every method."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .vocab import Vocabulary

State = Any


class LanguageModel(Protocol):
    vocab: Vocabulary

    def start(self, context: str) -> tuple[State, torch.Tensor]: ...

    def step(self, state: State, ids: torch.Tensor) -> tuple[State, torch.Tensor]: ...

    def take(self, state: State, rows: torch.Tensor) -> State: ...


class Scorer:
    """Wraps a model, counting model steps (one per row of every ``step`` call)."""

    def __init__(self, model: LanguageModel) -> None:
        self.model = model
        self.vocab = model.vocab
        self.steps = 0

    def start(self, context: str) -> tuple[State, torch.Tensor]:
        self.steps += len(context)
        return self.model.start(context)

    def step(self, state: State, ids: torch.Tensor) -> tuple[State, torch.Tensor]:
        self.steps += int(ids.shape[0])
        return self.model.step(state, ids)

    def take(self, state: State, rows: torch.Tensor) -> State:
        return self.model.take(state, rows)
