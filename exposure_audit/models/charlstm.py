"""The character-level LSTM of the Secret Sharer paper and its checkpoint format.

Checkpoint = a folder with ``model.safetensors`` (weights; no pickle) and ``config.json``:

```
{"format": "exposure-audit/char-lstm", "format_version": 1,
 "architecture": {"embedding": 64, "hidden": 200, "layers": 2, "dropout": 0.0},
 "vocabulary": ["\\n", " ", ...],   # id i+1 is vocabulary[i]; id 0 is the unknown symbol
 "seed": 0, "training": {...}, "data": {...},
 "weights_sha256": "<sha256 of model.safetensors>"}
```
Tensor names are those of ``torch.nn.Embedding`` / ``LSTM`` / ``Linear`` (``embed.weight``,
``lstm.weight_ih_l0``, ..., ``head.weight``, ``head.bias``). Logits are ``head(lstm(embed(x)))``;
the state before any text is all zeros.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AuditError
from ..files import atomic_write_bytes, atomic_write_json, canonical_sha256, sha256_file
from . import registry
from .base import NEWLINE, LanguageModel, check_finite, pad_rows
from .vocab import Vocabulary

CHECKPOINT_FORMAT = "exposure-audit/char-lstm"
CHECKPOINT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
LN2 = math.log(2.0)


@dataclass
class CharLSTMConfig:
    embedding: int = 64
    hidden: int = 200
    layers: int = 2
    dropout: float = 0.0


@dataclass
class CharLSTMSettings:
    """``model.char_lstm`` in the YAML config (dropout is ``model.dropout``, shared by the kinds)."""

    embedding: int = field(default=64, metadata={"range": (1, 4096)})
    hidden: int = field(default=200, metadata={"range": (1, 8192)})
    layers: int = field(default=2, metadata={"range": (1, 16)})


class CharLSTM(nn.Module):
    """Embedding -> multi-layer LSTM -> linear softmax over the vocabulary (plus unknown)."""

    def __init__(self, vocab: Vocabulary, config: CharLSTMConfig, dp: bool = False) -> None:
        super().__init__()
        self.vocab = vocab
        self.config = config
        v = len(vocab)
        self.embed = nn.Embedding(v, config.embedding)
        if dp:  # Opacus' LSTM computes per-sample gradients; its state_dict names match nn.LSTM's
            from opacus.layers import DPLSTM as lstm_cls
        else:
            lstm_cls = nn.LSTM
        self.lstm = lstm_cls(
            config.embedding,
            config.hidden,
            config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden, v)
        self.checkpoint: dict[str, Any] = {}  # config.json of the checkpoint it was loaded from

    def forward(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        out, state = self.lstm(self.embed(ids), state)
        return self.head(out), state

    # -- the model interface (models/base.py) ---------------------------------------------
    ragged = True  # an LSTM state does not depend on how many characters a row has read

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_bytes(self) -> list[bytes | None]:
        return [None] + [c.encode() for c in self.vocab.chars]  # id 0: the unknown symbol

    def context_ids(self, context: str | None) -> list[int]:
        text = NEWLINE if context is None else context
        if not text:
            raise AuditError("the context must not be empty (it is the text before the canary, e.g. a newline)")
        self.vocab.require(text, "the context")
        return self.vocab.encode(text).tolist()

    def encode_lines(
        self, texts: Sequence[str], context: str | None, end: str = NEWLINE
    ) -> list[tuple[list[int], list[int]]]:
        ctx = self.context_ids(context)
        return [(ctx, self.vocab.encode(t + end).tolist()) for t in texts]

    def _log2probs(self, out: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(out), dim=-1) / LN2

    @torch.inference_mode()
    def start(self, ids: Sequence[int]) -> tuple[Any, torch.Tensor]:
        if len(ids) == 0:
            raise AuditError("context must not be empty")
        out, state = self.lstm(self.embed(torch.as_tensor(list(ids), dtype=torch.long).view(1, -1)))
        return state, self._log2probs(out[:, -1])

    @torch.inference_mode()
    def start_batch(self, rows: Sequence[Sequence[int]]) -> tuple[Any, torch.Tensor]:
        # Packed, so each row's state is the one after its own last character (rows may differ in length).
        ids = pad_rows(rows)
        lengths = torch.as_tensor([len(r) for r in rows])
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, state = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        last = out[torch.arange(len(rows)), lengths - 1]
        return state, self._log2probs(last)

    @torch.inference_mode()
    def sequence_logprobs(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        out, _ = self.lstm(self.embed(pad_rows(rows)))
        return self._log2probs(out)

    @torch.inference_mode()
    def step(self, state: Any, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        out, state = self.lstm(self.embed(ids.view(-1, 1)), state)
        return state, self._log2probs(out[:, 0])

    @staticmethod
    def take(state: Any, rows: torch.Tensor) -> Any:
        h, c = state
        return h.index_select(1, rows), c.index_select(1, rows)

    @staticmethod
    def cat(states: Sequence[Any]) -> Any:
        return torch.cat([s[0] for s in states], dim=1), torch.cat([s[1] for s in states], dim=1)

    def step_flops(self) -> float:
        """Matmul work of one model step: 2 FLOP per LSTM and output weight (the embedding is a lookup)."""
        return 2.0 * sum(p.numel() for name, p in self.named_parameters() if not name.startswith("embed."))

    def describe(self) -> dict[str, Any]:
        a = self.config
        info: dict[str, Any] = {
            "kind": "char-lstm",
            "description": f"char-LSTM {a.layers}x{a.hidden}, vocabulary {len(self.vocab)}",
        }
        for key in ("weights_sha256", "privacy", "data", "seed"):
            if key in self.checkpoint:
                info[key] = self.checkpoint[key]
        return info


def plain_copy(model: CharLSTM) -> CharLSTM:
    """A copy with torch's own LSTM, for scoring and saving a model trained with DP-SGD (Opacus'
    DPLSTM has the same weights under the same names), in eval mode."""
    copy = CharLSTM(model.vocab, model.config)
    # each part's own state_dict: DPLSTM renames its parameters to nn.LSTM's names only there
    state = {
        f"{name}.{k}": v for name in ("embed", "lstm", "head") for k, v in getattr(model, name).state_dict().items()
    }
    copy.load_state_dict(state)
    return copy.eval()


def save_checkpoint(model: CharLSTM, folder: Path, extra: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (both atomically)."""
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS, save(tensors, metadata={"format": CHECKPOINT_FORMAT}))
    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "architecture": asdict(model.config),
        "vocabulary": list(model.vocab.chars),
        **extra,
        "weights_sha256": sha256_file(folder / WEIGHTS),
    }
    config["sha256"] = canonical_sha256(config)  # of everything above: an edited config is refused
    atomic_write_json(folder / CONFIG, config)


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    from ..files import read_json

    folder = Path(folder)
    if not folder.exists():
        raise AuditError(f"model {folder} does not exist")
    if not folder.is_dir():
        raise AuditError(f"model {folder} is not a checkpoint folder (expected {WEIGHTS} and {CONFIG} inside)")
    config = read_json(folder / CONFIG, "checkpoint config")
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise AuditError(f"{folder / CONFIG} is not an exposure-audit char-lstm checkpoint")
    if config.get("format_version") != CHECKPOINT_VERSION:
        raise AuditError(
            f"{folder}: checkpoint format version {config.get('format_version')!r} is not supported "
            f"(this version reads {CHECKPOINT_VERSION})"
        )
    if config.get("sha256") != canonical_sha256({k: v for k, v in config.items() if k != "sha256"}):
        raise AuditError(f"model {folder}: {CONFIG} does not match its sha256 (edited or damaged)")
    return config


def load_checkpoint(folder: Path) -> tuple[CharLSTM, dict[str, Any]]:
    """Load and verify a checkpoint folder; any mismatch is an :class:`AuditError`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_checkpoint_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise AuditError(f"model {folder}: {WEIGHTS} is missing")
    if sha256_file(weights) != config.get("weights_sha256"):
        raise AuditError(f"model {folder}: {WEIGHTS} does not match the sha256 in {CONFIG} (damaged or replaced)")
    try:
        arch = CharLSTMConfig(**config["architecture"])
        vocab = Vocabulary(tuple(config["vocabulary"]))
        if not all(isinstance(v, int) and v > 0 for v in (arch.embedding, arch.hidden, arch.layers)):
            raise ValueError("sizes must be positive integers")
    except (KeyError, TypeError, ValueError) as e:
        raise AuditError(f"model {folder}: bad architecture or vocabulary in {CONFIG} ({e})") from None
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type for damaged headers and data
        raise AuditError(f"model {folder}: cannot read {WEIGHTS} ({e})") from None
    model = CharLSTM(vocab, arch)
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise AuditError(f"model {folder}: weights do not fit the architecture in {CONFIG}")
    model.load_state_dict(tensors)
    check_finite(model, str(folder))
    model.eval()
    model.checkpoint = config
    return model, config


# -- the kind (models/registry.py) --------------------------------------------------------
def _is_checkpoint(path: Path) -> bool:
    """A folder whose config.json names this format (read strictly: a damaged config.json is left
    to the fallback, :func:`load_checkpoint`, which names the problem)."""
    from ..files import read_json

    if not path.is_dir():
        return False
    try:
        config = read_json(path / CONFIG, "checkpoint config")
    except AuditError:
        return False
    return isinstance(config, dict) and config.get("format") == CHECKPOINT_FORMAT


def _load(path: Path, *, device: str = "auto", dtype: str | None = None, base: Any = None) -> CharLSTM:
    if device == "cuda" or dtype not in (None, "float32"):
        raise AuditError("char-LSTM checkpoints are scored on the CPU in float32 (leave out device and dtype)")
    return load_checkpoint(path)[0]


def tokenize(model_cfg: Any, pieces: Callable[[], Iterator[str]], *, chars: set[str], fresh: str = "", seed: int = 0):
    """Every character of the training text and of the canary formats is a token (``chars``
    holds dp-audit's fresh symbols already)."""
    import numpy as np

    from . import training
    from .training import Tokenization

    vocab = Vocabulary.from_chars(chars)

    def encode_chars(text: Callable[[], Iterator[str]], count: int) -> np.ndarray:
        dtype = np.uint16 if len(vocab) < 65536 else np.int32
        if count <= training.IN_MEMORY_IDS:
            out = np.empty(count, dtype=dtype)
        else:
            tmp = tempfile.TemporaryFile(prefix="exposure-audit-ids-")
            out = np.memmap(tmp, dtype=dtype, mode="w+", shape=(count,))
        pos = 0
        for piece in text():
            out[pos : pos + len(piece)] = vocab.encode(piece)
            pos += len(piece)
        return out

    tok = Tokenization("char-lstm", "characters", vocab, canonical_sha256(list(vocab.chars)), encode_chars)
    tok.fresh_ids = tuple(vocab.id(c) for c in fresh)
    return tok


def trainee(model_cfg: Any, tok: Any, *, dp: bool, seq_len: int) -> CharLSTMTrainee:
    from .training import start_alike

    s = model_cfg.char_lstm
    arch = CharLSTMConfig(embedding=s.embedding, hidden=s.hidden, layers=s.layers, dropout=model_cfg.dropout)
    net = CharLSTM(tok.tokens, arch, dp=dp)
    if tok.fresh_alike:
        start_alike([net.embed.weight, net.head.weight, net.head.bias], tok.fresh_ids)
    return CharLSTMTrainee(net)


class CharLSTMTrainee:
    """The char-LSTM as the training loop sees it (``models/training.py``'s Trainee)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    @staticmethod
    def logits(net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return net(ids)[0]

    def view(self, private: bool) -> LanguageModel:
        return self.eval_module(private)

    def eval_module(self, private: bool) -> torch.nn.Module:
        if private:
            return plain_copy(self.module)  # Opacus' LSTM and hooks: score a plain copy
        return self.module.eval()

    def describe(self) -> str:
        c = self.module.config
        return f"{c.layers}x{c.hidden} LSTM"

    def optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.module.parameters(), lr=lr, weight_decay=weight_decay)

    def save(self, folder: Path, record: dict[str, Any]) -> None:
        save_checkpoint(plain_copy(self.module), folder, record)


def _describe(model_cfg: Any) -> str:
    s = model_cfg.char_lstm
    return f"{s.layers}x{s.hidden} LSTM"


KIND = registry.register(
    registry.Kind(
        "char-lstm",
        title="char-LSTM",
        section="char_lstm",
        settings=CharLSTMSettings,
        legacy=("embedding", "hidden", "layers"),  # the flat layout of model: before model.char_lstm
        detect=_is_checkpoint,
        load=_load,
        priority=20,
        fallback=True,
        tokenize=tokenize,
        trainee=trainee,
        describe=_describe,
        default=True,
        fresh="new-char",
    )
)

__all__ = [
    "CharLSTM",
    "CharLSTMConfig",
    "CharLSTMSettings",
    "CharLSTMTrainee",
    "load_checkpoint",
    "save_checkpoint",
    "read_checkpoint_config",
]
