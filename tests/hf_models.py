"""Tiny Hugging Face models for the tests: built in a few seconds from a fixed seed, never downloaded.

A tokenizer is trained with the ``tokenizers`` library on a small in-memory corpus full of numbers,
then a random-weight GPT-2 or Llama whose vocabulary is that tokenizer's is saved next to it with
``save_pretrained(..., safe_serialization=True)``: a folder :func:`exposure_audit.models.hf.load_hf`
reads like any local checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

BOS = "<|bos|>"
EOS = "<|eos|>"
TOKENIZER_KINDS = ("merged-digits", "split-digits")
ARCHS = ("gpt2", "llama")
VOCAB = 400
# Logit scale: the default init (std 0.02, width 32) gives nearly uniform next-token distributions
# (entropy ~8.4 of 8.6 bits). x15 gives entropy ~5.5-6 bits with the top token ~8 bits above the
# median one, so ranks among candidates spread out, yet no token is near-certain (x40: entropy ~1-2).
PEAK_SCALE = 15.0

WORDS = ["the", "number", "is", "my", "pin", "code", "card", "account", "secret", "call", "me", "at", "and", "your"]


def corpus(lines: int = 400, seed: int = 0) -> list[str]:
    """English-ish lines, most of them holding digit strings (PINs, card-like groups, phone numbers)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        kind = rng.randrange(4)
        if kind == 0:
            words.append(f"{rng.randrange(10_000):04d}")
        elif kind == 1:
            words.append(" ".join(f"{rng.randrange(10_000):04d}" for _ in range(4)))
        elif kind == 2:
            words.append(f"{rng.randrange(1000):03d}-{rng.randrange(10_000):04d}")
        # frequent fixed numbers so that BPE learns multi-digit merges
        words.append(rng.choice(["4821", "0375", "12", "2024", "99", ""]))
        out.append(" ".join(w for w in words if w))
    return out


def train_tokenizer(kind: str, folder: Path, bos: bool = True, extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on :func:`corpus` and save it in ``folder``.

    ``merged-digits``: GPT-2 style, digits merge into multi-digit tokens. ``split-digits``: digits are
    split before BPE (Llama-3 / SmolLM2 style), so every digit is its own token. ``extra``: more
    training lines (repeat one to make it a single long token).
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind {kind!r}: expected one of {TOKENIZER_KINDS}")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if kind == "split-digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS] if bos else [EOS]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tok.train_from_iterator([*corpus(), *extra], trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS if bos else None, eos_token=EOS)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(folder)
    return wrapped


def tiny_model(
    folder: Path,
    arch: str = "gpt2",
    tokenizer: str = "merged-digits",
    bos: bool = True,
    seed: int = 0,
    peaky: bool = True,
    pad_vocab: int = 0,
    extra: tuple[str, ...] = (),
) -> Path:
    """A random-weight 2-layer causal LM of width 32 and its tokenizer, saved in ``folder``.

    ``pad_vocab`` extra logit rows that no token stands for (as in models padded to a multiple of 64).
    """
    folder = Path(folder)
    tok = train_tokenizer(tokenizer, folder, bos=bos, extra=extra)
    ids = {"vocab_size": len(tok) + pad_vocab, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(seed)
    model: PreTrainedModel
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, **ids))
        final_norm = model.transformer.ln_f
    elif arch == "llama":
        config = LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            **ids,
        )
        model = LlamaForCausalLM(config)
        final_norm = model.model.norm
    else:
        raise ValueError(f"arch {arch!r}: expected one of {ARCHS}")
    if peaky:
        # Scaling the final norm's gain scales every logit, also where the head is tied to the input embedding.
        with torch.no_grad():
            final_norm.weight.mul_(PEAK_SCALE)
    model.eval().save_pretrained(folder, safe_serialization=True)
    return folder
