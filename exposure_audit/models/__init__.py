"""Language models behind one small interface, so the exposure engine, extraction and other
model families share code.

A model is anything with:

- ``vocab``: a :class:`~exposure_audit.models.vocab.Vocabulary` (characters <-> ids);
- ``start(context) -> (state, logp)``: the state after reading ``context`` (batch of one) and
  ``logp``, the log2-probabilities of the next character, shape ``[1, V]``;
- ``step(state, ids) -> (state, logp)``: feed one character per row (``ids`` shape ``[B]``);
- ``take(state, rows) -> state``: select / repeat rows of a state (``rows`` a LongTensor).

Each row of a ``step`` call is one *model step*: the unit of work every method reports.
"""

from .base import LanguageModel, Scorer
from .charlstm import CharLSTM, CharLSTMConfig, load_checkpoint, save_checkpoint
from .vocab import Vocabulary

__all__ = [
    "CharLSTM",
    "CharLSTMConfig",
    "LanguageModel",
    "Scorer",
    "Vocabulary",
    "load_checkpoint",
    "save_checkpoint",
]
