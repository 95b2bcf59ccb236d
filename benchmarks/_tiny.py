"""What the benchmarks' ``--tiny`` modes run on: tiny corpora, a tiny audit made by the CLI, and a
tiny random-weight Hugging Face model, all built at run time in seconds from fixed seeds.

Not a benchmark. The tiny modes exist so that the test suite (tests/test_benchmarks.py) runs
every script once: an interface change then breaks the test, not a figure someone reproduces
months later. Their numbers mean nothing. Everything here goes through public entry points
(``exposure_audit.cli.main``, ``exposure_audit.models.load_model``) so that library refactors
leave it alone.
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ["the", "model", "reads", "text", "and", "learns", "a", "line", "of", "words", "every", "day", "pin"]

# The tiny audit: one 10^4 format, canaries at 0, 1 and 8 insertions, a 1x16 char-LSTM, 2 epochs.
TINY_FORMAT = "the random number is {d:4}"
TINY_AUDIT = """\
seed: 0
corpus: {corpus}
insert: {{formats: ["{fmt}"], schedule: [0, 1, 8], per_count: 1}}
model: {{embedding: 8, hidden: 16, layers: 1}}
train: {{epochs: 2, batch_size: 16, seq_len: 40, threads: 2}}
measure: {{samples: 200, bootstrap: 0, max_steps: 200000}}
extract: {{top: 3, max_steps: 5000}}
"""


def corpus_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def write_corpus(path: Path, lines: int = 300, seed: int = 0) -> Path:
    path.write_text("\n".join(corpus_lines(lines, seed)) + "\n", encoding="utf-8")
    return path


def audit(root: Path) -> Path:
    """A finished audit folder (model/, data/canaries.json, report.json) of a tiny config, made by
    ``exposure-audit audit``: what engine.py, estimators.py and extract.py take as ``--audit``."""
    import contextlib
    import io

    from exposure_audit.cli import main

    root.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(root / "corpus.txt")
    config = root / "tiny.yaml"
    config.write_text(TINY_AUDIT.format(corpus=corpus, fmt=TINY_FORMAT), encoding="utf-8")
    out = root / "audit"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["audit", str(config), "--out", str(out), "-q"])
    if code != 0:
        raise SystemExit(f"the tiny audit failed (exit {code}):\n{printed.getvalue()}")
    print(f"tiny audit: {printed.getvalue().strip().splitlines()[-1]}")
    return out


def hf_model(folder: Path, seed: int = 0, digits: str = "split", vocab: int = 400, peak: float = 15.0):
    """A random-weight 2-layer Llama of width 32 and a byte-level BPE of ``vocab`` tokens learned on
    a small corpus full of numbers (digits ``split`` one per token, or ``merged``), saved in
    ``folder`` and loaded through :func:`exposure_audit.models.load_model` (as tests/hf_models.py
    builds them; the stand-in for SmolLM2 or a real checkpoint in the tiny modes)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from exposure_audit.models import load_model

    rng = random.Random(seed)
    lines = [f"{' '.join(rng.choice(WORDS) for _ in range(4))} {rng.randrange(10**5):05d}" for _ in range(400)]
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    split = [pre_tokenizers.Digits(individual_digits=True)] if digits == "split" else []
    tok.pre_tokenizer = pre_tokenizers.Sequence([*split, byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    net = LlamaForCausalLM(config)
    with torch.no_grad():
        net.model.norm.weight.mul_(peak)  # peakier next-token distributions than the default init
    folder = Path(folder)
    net.eval().save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return load_model(folder)
