"""Transformers this tool trains or fine-tunes: a small Llama-architecture causal LM with a
tokenizer learned on the training text, or a user's Hugging Face model (``base``).

Why Llama rather than GPT-2: it is the architecture of today's open models (SmolLM2, Llama 3,
Qwen-style RoPE + RMSNorm + SwiGLU), so what is found here transfers to the models teams
fine-tune; it has no fixed table of positions to outgrow; its layers are ``nn.Linear``,
``nn.Embedding`` and an RMSNorm, all of which Opacus computes per-example gradients for.

Tokenizers learned here (``tokenizers`` library, deterministic for the data):
- ``bpe``: byte-level BPE (GPT-2's byte alphabet, so any text is encodable) of ``vocab_size``
  tokens; with ``split_digits`` digits are split before the merges (as Llama 3 and SmolLM2 do),
  so every digit is its own token and a digit hole's tree has one path per candidate.
- ``char``: the byte alphabet and no merges: a character-level model for ASCII text.
Neither has a BOS token: a model trained here reads its lines after a newline, as in training,
and its saved record says so (``exposure_audit.json`` ``context``), so ``measure`` scores
canaries in the context the model learned them in.

The output is a Hugging Face folder (``save_pretrained``: safetensors weights, ``config.json``,
tokenizer files) that any HF tool loads, plus ``exposure_audit.json``: data hashes, seed,
training settings, privacy, the context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AuditError
from ..files import atomic_write_json, canonical_sha256
from . import registry
from .base import LanguageModel
from .hf import TRAINING_RECORD, HFModel, load_hf

SPECIALS = ["<|endoftext|>"]  # end of text; also the padding token. Never inside the training text.
CONTEXT = "\n"  # what a line of the training text follows, so what canaries are scored after


@dataclass
class TransformerConfig:
    """``model.transformer`` in the YAML config: the small transformer trained from scratch."""

    layers: int = field(default=4, metadata={"range": (1, 128)})
    width: int = field(default=128, metadata={"range": (1, 65536)})  # hidden size
    heads: int = field(default=4, metadata={"range": (1, 1024)})
    context: int = field(default=256, metadata={"range": (2, 1 << 20)})  # most tokens (train.seq_len must fit)
    tokenizer: str = "bpe"  # bpe | char
    # bpe only: tokens, the byte alphabet and the special token included
    vocab_size: int = field(default=1024, metadata={"range": (257, 1 << 20)})
    split_digits: bool = True  # bpe only: one token per digit (Llama 3 / SmolLM2 style)


def learn_tokenizer(lines: Iterable[str], cfg: TransformerConfig, fresh: str = "") -> Any:
    """A byte-level tokenizer learned on ``lines`` (see the module docstring).

    ``fresh``: symbols that become tokens of their own (dp-audit's new-token canaries), learned
    from nothing: they are removed from the text the merges are learned on (so no merge holds
    their bytes) and added after it, one token each (ids after the learned vocabulary)."""
    if fresh:
        drop = str.maketrans("", "", fresh)
        lines = (line.translate(drop) for line in lines)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE())
    parts = [pre_tokenizers.ByteLevel(add_prefix_space=False)]
    if cfg.tokenizer == "bpe" and cfg.split_digits:
        parts.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(parts)
    tok.decoder = decoders.ByteLevel()
    size = cfg.vocab_size if cfg.tokenizer == "bpe" else len(alphabet) + len(SPECIALS)
    trainer = trainers.BpeTrainer(
        vocab_size=size, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(lines, trainer)
    if cfg.tokenizer == "bpe" and tok.get_vocab_size() < cfg.vocab_size:
        raise AuditError(
            f"model.transformer.vocab_size: the training text supports at most {tok.get_vocab_size()} tokens, "
            f"not {cfg.vocab_size}; use a smaller vocabulary or more text"
        )
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0], pad_token=SPECIALS[0])
    if fresh:
        _add_fresh(out, fresh, "the learned tokenizer")
    return out


def _add_fresh(tokenizer: Any, fresh: str, where: str) -> None:
    from tokenizers import AddedToken

    before = len(tokenizer)
    tokenizer.add_tokens([AddedToken(c, normalized=False, special=False) for c in fresh])
    if len(tokenizer) != before + len(fresh):
        raise AuditError(f"audit.fresh_tokens: {where} already has some of the fresh symbols as tokens")


def fresh_capacity(path: Path) -> tuple[int, int, int]:
    """(embedding rows, tokenizer length, room): how many fresh tokens the base at ``path`` can
    take in the spare rows of its embedding, without changing any shape of the base."""
    base = load_hf(path, device="cpu", dtype="float32")
    rows = int(base.model.get_input_embeddings().weight.shape[0])
    n = len(base.tokenizer)
    return rows, n, max(0, rows - n)


def add_fresh_tokens(net: torch.nn.Module, tokenizer: Any, fresh: str, *, seed: int, where: str) -> None:
    """dp-audit's new-token canaries on a base model: the fresh symbols take the spare rows of
    its embedding (rows past the tokenizer's length, which no text reaches), never a new shape.
    Those rows (and the output layer's) are drawn afresh from the seed, with the mean and
    spread of the base's own rows, so every fresh token starts alike whatever the padding held."""
    emb = net.get_input_embeddings().weight
    rows, n = int(emb.shape[0]), len(tokenizer)
    if len(fresh) > rows - n:
        raise AuditError(
            f"audit.fresh_tokens: {len(fresh)} fresh tokens do not fit {where}: its embedding has {rows} rows "
            f"for {n} tokens, room for {max(0, rows - n)} without changing its shapes"
        )
    _add_fresh(tokenizer, fresh, where)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        heads = [emb]
        out = net.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            heads.append(out.weight)
        for w in heads:
            mean, std = w[:n].mean(0), w[:n].std(0)
            w[n : n + len(fresh)] = mean + std * torch.randn(len(fresh), w.shape[1], generator=gen)


def build(tokenizer: Any, cfg: TransformerConfig, *, dropout: float) -> torch.nn.Module:
    """A fresh model (weights from torch's current RNG state: seed it first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.width % cfg.heads:
        raise AuditError(f"model.transformer: width {cfg.width} is not a multiple of heads {cfg.heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        intermediate_size=4 * cfg.width,
        max_position_embeddings=cfg.context,
        attention_dropout=dropout,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def load_base(path: Path) -> tuple[torch.nn.Module, Any, int | None]:
    """A user's model to fine-tune: its module (float32, CPU), tokenizer and context length."""
    base = load_hf(path, device="cpu", dtype="float32")
    net = base.model
    if getattr(net, "hf_quantizer", None) is not None:
        # A GGUF file loads dequantized (plain float32 tensors), but transformers keeps its
        # quantizer attached and then refuses save_pretrained. What is trained and saved here is
        # the float model, so it is detached: the output is an ordinary safetensors folder.
        net.hf_quantizer = None
        net.is_quantized = False
        for cfg in (net.config, getattr(net, "generation_config", None)):
            if cfg is not None and hasattr(cfg, "quantization_config"):
                delattr(cfg, "quantization_config")
    return net.train(), base.tokenizer, base.max_positions


def encode(tokenizer: Any, lines: Iterable[str], block: int = 4096) -> np.ndarray:
    """Token ids of text given as lines (each with its newline), encoded in blocks of lines.

    A block boundary is a line boundary, where a byte-level tokenizer splits anyway (a newline
    never merges with the next line's first letter)."""
    out: list[np.ndarray] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            ids = tokenizer("".join(pending), add_special_tokens=False)["input_ids"]
            out.append(np.asarray(ids, dtype=np.int32))
            pending.clear()

    for line in lines:
        pending.append(line)
        if len(pending) >= block:
            flush()
    flush()
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)


def logits(net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return net(input_ids=ids).logits


def scoring_view(net: torch.nn.Module, tokenizer: Any, record: dict[str, Any]) -> HFModel:
    """The model behind the scoring interface (for exposure tracking during training)."""
    return HFModel(net.eval(), tokenizer, path=Path("."), weight_files=[], training=record)


def save(folder: Path, net: torch.nn.Module, tokenizer: Any, record: dict[str, Any]) -> None:
    """A Hugging Face folder plus this tool's record (weights' SHA-256 included)."""
    from transformers.utils import logging as hf_logging

    from ..files import sha256_file

    folder = Path(folder)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # this tool draws its own bars (and --quiet silences them)
    try:
        net.save_pretrained(folder, safe_serialization=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    weights = sorted(folder.glob("*.safetensors"))
    record = {**record, "weights_sha256": sha256_file(weights[0]) if len(weights) == 1 else None}
    atomic_write_json(folder / TRAINING_RECORD, record)


def save_adapter(folder: Path, peft_model: Any, tokenizer: Any, record: dict[str, Any], *, base: str | None) -> None:
    """A PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``), the tokenizer and
    this tool's record. Its base is ``base`` (absolute, so the folder can move), or for a model
    trained from scratch the frozen initial weights, saved in ``base/`` inside the folder."""
    folder = Path(folder)
    config = peft_model.peft_config["default"]
    if base:
        config.base_model_name_or_path = str(Path(base).resolve())
    else:
        import copy

        plain = copy.deepcopy(peft_model).unload()  # the frozen base without the LoRA layers
        save(folder / "base", plain, tokenizer, {"format": "exposure-audit/lora-base", "context": CONTEXT})
        config.base_model_name_or_path = "base"  # relative to the adapter folder (models/adapter.py)
    # save_embedding_layers=False: LoRA here leaves the embeddings frozen, and peft's "auto" looks the
    # base's config up on the Hub (a network request) when the base path is not a local folder
    peft_model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
    save_files = sorted(folder.glob("*.safetensors"))
    tokenizer.save_pretrained(folder)
    from ..files import sha256_file

    record = {**record, "weights_sha256": sha256_file(save_files[0]) if len(save_files) == 1 else None}
    atomic_write_json(folder / TRAINING_RECORD, record)


# -- the kind (models/registry.py) --------------------------------------------------------
TOKENIZERS = ("bpe", "char")


def tokenize(model_cfg: Any, pieces: Callable[[], Iterator[str]], *, chars: set[str], fresh: str = "", seed: int = 0):
    """A tokenizer learned on the training text, or the base model's (its fresh tokens added)."""
    from .training import Tokenization, _lines

    base = None
    if model_cfg.base:
        module, tokenizer, context = load_base(Path(model_cfg.base))
        if fresh:
            add_fresh_tokens(module, tokenizer, fresh, seed=seed, where=f"base model {model_cfg.base}")
        base = (module, context)
    else:
        tokenizer = learn_tokenizer(_lines(pieces), model_cfg.transformer, fresh)

    def encode_tokens(text: Callable[[], Iterator[str]], count: int) -> np.ndarray:
        return encode(tokenizer, _lines(text))

    fingerprint = canonical_sha256(tokenizer.backend_tokenizer.to_str())
    tok = Tokenization("transformer", "tokens", tokenizer, fingerprint, encode_tokens, base)
    tok.fresh_ids = tuple(tokenizer.convert_tokens_to_ids(list(fresh))) if fresh else ()
    return tok


def trainee(model_cfg: Any, tok: Any, *, dp: bool, seq_len: int) -> TransformerTrainee:
    from .training import start_alike

    if tok.base is not None:
        module, context = tok.base
        where = f"base model {model_cfg.base}"
    else:
        module = build(tok.tokens, model_cfg.transformer, dropout=model_cfg.dropout)
        context, where = model_cfg.transformer.context, "model.transformer.context"
    if context is not None and seq_len + 1 > context:
        raise AuditError(f"train.seq_len: windows of {seq_len + 1} tokens do not fit the {where} of {context} tokens")
    if tok.fresh_alike:
        out = module.get_output_embeddings()
        start_alike([module.get_input_embeddings().weight, *([out.weight] if out is not None else [])], tok.fresh_ids)
    if model_cfg.lora.enabled:
        from .adapter import wrap_lora

        module = wrap_lora(module, model_cfg.lora, f"model {model_cfg.base or 'model.transformer'}")
    return TransformerTrainee(module, tok.tokens, model_cfg)


class TransformerTrainee:
    """A transformer (fresh, a base, or either with LoRA) as the training loop sees it."""

    def __init__(self, module: torch.nn.Module, tokenizer: Any, model_cfg: Any) -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg

    @staticmethod
    def logits(net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return net(input_ids=ids).logits

    @property
    def lora(self) -> bool:
        return bool(self.model_cfg.lora.enabled)

    def _record(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"kind": "transformer", "base": self.model_cfg.base}
        if not self.model_cfg.base:
            cfg["transformer"] = asdict(self.model_cfg.transformer)
        if self.lora:
            cfg["lora"] = asdict(self.model_cfg.lora)
        return {"format": "exposure-audit/hf-training", "context": CONTEXT, "model": cfg}

    def _net(self) -> torch.nn.Module:
        """The causal LM itself: with LoRA, the base with its (unmerged) LoRA layers injected."""
        return self.module.get_base_model() if self.lora else self.module

    def view(self, private: bool) -> LanguageModel:
        return scoring_view(self._net(), self.tokenizer, self._record())

    def eval_module(self, private: bool) -> torch.nn.Module:
        return self.module.eval()  # Opacus' hooks record nothing in eval mode

    def describe(self) -> str:
        c = self._net().config
        what = f"fine-tuning {self.model_cfg.base}" if self.model_cfg.base else "transformer"
        if self.lora:
            lo = self.model_cfg.lora
            what += f" with LoRA r={lo.r} alpha={lo.alpha:g} on {','.join(lo.target_modules)}"
        return f"{what} ({c.num_hidden_layers}x{c.hidden_size}, {len(self.tokenizer)} tokens)"

    def optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        # decoupled weight decay, as transformers are trained and fine-tuned; with LoRA only the adapter trains
        params = [p for p in self.module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def save(self, folder: Path, record: dict[str, Any]) -> None:
        self.module.eval()
        record = {**self._record(), **record}
        if not self.lora:
            save(folder, self.module, self.tokenizer, record)
        elif self.model_cfg.lora.merge:
            import copy

            merged = copy.deepcopy(self.module).merge_and_unload()  # the trained module stays as it is
            save(folder, merged, self.tokenizer, record)
        else:
            save_adapter(folder, self.module, self.tokenizer, record, base=self.model_cfg.base)


def _describe(model_cfg: Any) -> str:
    if model_cfg.base:
        return f"fine-tuning {model_cfg.base}"
    t = model_cfg.transformer
    return f"{t.layers}x{t.width} transformer ({t.tokenizer} tokenizer)"


def _check(cfg: Any) -> None:
    t = cfg.model.transformer
    if t.tokenizer not in TOKENIZERS:
        raise AuditError(f"model.transformer.tokenizer: {t.tokenizer!r} is not one of {', '.join(TOKENIZERS)}")


KIND = registry.register(
    registry.Kind(
        "transformer",
        section="transformer",
        settings=TransformerConfig,
        check=_check,
        tokenize=tokenize,
        trainee=trainee,
        fine_tunes=True,
        adaptable=True,
        fresh="new-token",
        describe=_describe,
    )
)


__all__: Sequence[str] = [
    "CONTEXT",
    "TransformerConfig",
    "TransformerTrainee",
    "build",
    "encode",
    "learn_tokenizer",
    "load_base",
    "save",
    "save_adapter",
]
