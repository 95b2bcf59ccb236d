"""Training throughput: plain Adam vs DP-SGD (Opacus) for the same char-LSTM and batch.

    .venv/bin/python benchmarks/dp_speed.py

Prints characters per second of each and their ratio, for the paper's 2x200 model and a
smaller one. Not a test: the figures depend on the machine.

    .venv/bin/python benchmarks/dp_speed.py --tiny   # seconds: a 1x16 model, 0.3 s of each
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F

from exposure_audit.models import CharLSTM, CharLSTMConfig, Vocabulary


def throughput(
    dp: bool, hidden: int, layers: int, batch: int, seq_len: int, seconds: float = 10.0, rows: int = 20_000
) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    vocab = Vocabulary.from_chars([chr(i) for i in range(32, 127)] + ["\n"])
    model = CharLSTM(vocab, CharLSTMConfig(64, hidden, layers), dp=dp)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    data = torch.randint(0, len(vocab), (rows, seq_len + 1))
    loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=True)
    if dp:
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, opt, loader = PrivacyEngine(accountant="rdp").make_private(
                module=model,
                optimizer=opt,
                data_loader=loader,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                poisson_sampling=True,
            )
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    chars, t0, first = 0, time.perf_counter(), True
    for (x,) in loader:
        logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if first:  # do not count the first (warm-up) step
            chars, t0, first = 0, time.perf_counter(), False
            continue
        chars += x[:, 1:].numel()
        if time.perf_counter() - t0 > seconds:
            break
    return chars / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="one 1x16 model, batch 8, 20 characters, 0.3 s each")
    args = ap.parse_args(argv)
    configs, seconds, rows = ((200, 2, 32, 100), (128, 1, 32, 100)), 10.0, 20_000
    if args.tiny:
        configs, seconds, rows = ((16, 1, 8, 20),), 0.3, 400
    torch.set_num_threads(2)
    print(f"{'model':<10} {'batch':>5} {'seq':>4}  {'plain chars/s':>13}  {'DP-SGD chars/s':>14}  {'ratio':>6}")
    for hidden, layers, batch, seq in configs:
        plain = throughput(False, hidden, layers, batch, seq, seconds, rows)
        dp = throughput(True, hidden, layers, batch, seq, seconds, rows)
        print(f"{layers}x{hidden:<8} {batch:>5} {seq:>4}  {plain:>13,.0f}  {dp:>14,.0f}  {plain / dp:>5.1f}x")


if __name__ == "__main__":
    main()
