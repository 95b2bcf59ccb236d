"""Training throughput: plain Adam vs DP-SGD (Opacus) for the same char-LSTM and batch.

    .venv/bin/python benchmarks/dp_speed.py

Prints characters per second of each and their ratio, for the paper's 2x200 model and a
smaller one. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F

from exposure_audit.models import CharLSTM, CharLSTMConfig, Vocabulary


def throughput(dp: bool, hidden: int, layers: int, batch: int, seq_len: int, seconds: float = 10.0) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    vocab = Vocabulary.from_chars([chr(i) for i in range(32, 127)] + ["\n"])
    model = CharLSTM(vocab, CharLSTMConfig(64, hidden, layers), dp=dp)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    data = torch.randint(0, len(vocab), (20_000, seq_len + 1))
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


def main() -> None:
    torch.set_num_threads(2)
    print(f"{'model':<10} {'batch':>5} {'seq':>4}  {'plain chars/s':>13}  {'DP-SGD chars/s':>14}  {'ratio':>6}")
    for hidden, layers, batch, seq in ((200, 2, 32, 100), (128, 1, 32, 100)):
        plain = throughput(False, hidden, layers, batch, seq)
        dp = throughput(True, hidden, layers, batch, seq)
        print(f"{layers}x{hidden:<8} {batch:>5} {seq:>4}  {plain:>13,.0f}  {dp:>14,.0f}  {plain / dp:>5.1f}x")


if __name__ == "__main__":
    main()
