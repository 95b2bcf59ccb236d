"""Exposure tracking inside a team's own transformers.Trainer and a plain loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments  # noqa: E402

import exposure_audit  # noqa: E402
from exposure_audit.cli import main  # noqa: E402
from exposure_audit.data.manifest import Canary
from exposure_audit.integrations.transformers import ExposureCallback  # noqa: E402
from exposure_audit.training.metrics import read_metrics

from .hf_models import corpus, tiny_model  # noqa: E402

CANARIES = [
    Canary(id="hot", format="my pin is {d:3}", secret="417", text="my pin is 417", insertions=8, positions=[0] * 8),
    Canary(id="warm", format="my pin is {d:3}", secret="052", text="my pin is 052", insertions=1, positions=[0]),
    Canary(id="ctl", format="my pin is {d:3}", secret="998", text="my pin is 998", insertions=0),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("trainer") / "base", arch="llama", tokenizer="split-digits")


class Lines(torch.utils.data.Dataset):
    """Each item one line after BOS, as the canaries are scored; the hot canary 8 times."""

    def __init__(self, tokenizer, lines: list[str]) -> None:
        self.items = [
            [tokenizer.bos_token_id, *tokenizer(t + "\n", add_special_tokens=False)["input_ids"]] for t in lines
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.items[i])
        return {"input_ids": ids, "labels": ids.clone()}


def run_trainer(base: Path, out: Path, steps: int, **callback) -> tuple[Trainer, ExposureCallback]:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    lines = corpus(8, seed=3) + ["my pin is 417"] * 8 + ["my pin is 052"]
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=1,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    cb = ExposureCallback(canaries=CANARIES, samples=200, **callback)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Lines(tokenizer, lines),
        processing_class=tokenizer,
        data_collator=lambda items: {k: torch.stack([i[k] for i in items]) for k in items[0]},  # batch of 1
        callbacks=[cb],
    )
    trainer.train()
    return trainer, cb


def records_match(logged: dict, record: dict) -> bool:
    """The logged scalars and the metrics.jsonl record come from the same measurement."""
    return all(abs(logged[f"exposure/insertions_{n}"] - v) < 1e-3 for n, v in record["exposure_by_insertions"].items())


def test_callback_logs_through_the_trainer_and_writes_metrics(base, tmp_path):
    trainer, cb = run_trainer(base, tmp_path / "run", steps=4, every_n_steps=2)
    logged = [h for h in trainer.state.log_history if "exposure/max" in h]
    assert [h["step"] for h in logged] == [2, 4]
    assert {"exposure/mean", "exposure/insertions_0", "exposure/insertions_1", "exposure/insertions_8"} <= set(
        logged[0]
    )
    # one canary per count: the max over inserted canaries is the larger of counts 1 and 8, controls left out
    last = logged[-1]
    assert last["exposure/max"] == pytest.approx(max(last["exposure/insertions_1"], last["exposure/insertions_8"]))
    assert records_match(last, read_metrics(tmp_path / "run" / "metrics.jsonl")[-1])
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4] and all(r["event"] == "track" for r in records)
    assert set(records[0]["exposure"]) == {"hot", "warm", "ctl"}
    assert set(records[0]["exposure_by_insertions"]) == {"0", "1", "8"}
    # measuring left the model in training mode (dropout etc. as the Trainer set it)
    assert trainer.model.training
    assert not (tmp_path / "run" / "exposure_verdict.json").exists()  # no fail_above, no verdict


def test_stop_above_stops_early_and_fail_above_leaves_a_verdict(base, tmp_path, capsys):
    trainer, cb = run_trainer(base, tmp_path / "stop", steps=20, every_n_steps=1, stop_above=0.0, fail_above=0.0)
    assert cb.stopped_at == 1 and trainer.state.global_step == 1  # exposure > 0 bits at once: stopped
    verdict = json.loads((tmp_path / "stop" / "exposure_verdict.json").read_text())
    assert verdict["passed"] is False and verdict["canary"] in {"hot", "warm"} and verdict["step"] == 1
    assert cb.failed
    capsys.readouterr()
    assert main(["gate", str(tmp_path / "stop")]) == 1
    assert capsys.readouterr().out.startswith("FAIL: highest exposure")
    # a threshold no canary of a 10^3 format can pass (exposure <= log2 1000 < 10): a passing verdict
    _, ok = run_trainer(base, tmp_path / "pass", steps=2, every_n_steps=5, fail_above=10.0)
    assert ok.last_step == 2  # measured once, when training ended
    assert main(["gate", str(tmp_path / "pass" / "exposure_verdict.json")]) == 0
    assert main(["gate", str(tmp_path / "nowhere")]) == 2


def test_track_in_a_plain_loop_matches_measure(base, tmp_path):
    from exposure_audit.exposure.measure import measure
    from exposure_audit.models import load_model

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True).train()
    tracked = exposure_audit.track(
        model, tokenizer, CANARIES, step=7, metrics=tmp_path / "m.jsonl", prefer="exact", max_steps=10**6
    )
    assert model.training  # given back in the mode it was in
    ref = measure(load_model(base, device="cpu"), CANARIES, method="enumerate", bootstrap=0)
    assert [r.rank for r in tracked.results] == [r.rank for r in ref]
    (record,) = read_metrics(tmp_path / "m.jsonl")
    assert record["step"] == 7 and record["exposure"]["hot"] == round(ref[0].exposure, 4)
