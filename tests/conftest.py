import random

import pytest
import torch

from exposure_audit.models import CharLSTM, CharLSTMConfig, Vocabulary

torch.set_num_threads(2)

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 \n{}ACGT:."


@pytest.fixture(scope="session")
def tiny_model() -> CharLSTM:
    """A random-weight 2x24 char-LSTM: untrained, but a real model with context-dependent scores."""
    torch.manual_seed(1234)
    model = CharLSTM(Vocabulary.from_chars(CHARS), CharLSTMConfig(embedding=8, hidden=24, layers=2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # sharper distributions than the default init: ranks spread out more
    return model.eval()


def make_corpus(path, lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "model", "reads", "text", "and", "learns", "a", "line", "of", "words", "every", "day"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(lines)) + "\n"
    path.write_text(text)
    return text


def make_data(root, *, lines: int, schedule: str, fmt: str = "pin {d:3}", extra=(), corpus: str = "corpus.txt"):
    """A corpus of ``lines`` lines in ``root`` and an ``insert`` output folder ``root/data`` from it."""
    from exposure_audit.cli import main

    make_corpus(root / corpus, lines=lines)
    argv = ["insert", "--corpus", root / corpus, "--out", root / "data", "--format", fmt, "--schedule", schedule]
    assert main([str(a) for a in [*argv, *extra, "-q"]]) == 0
    return root / "data"
