"""PEFT LoRA adapters as a model kind: an adapter folder on top of a local base model.

An adapter folder is what ``peft`` writes with ``save_pretrained``: ``adapter_config.json``
(``peft_type`` LORA, ``r``, ``lora_alpha``, ``target_modules``, ``base_model_name_or_path``) and
``adapter_model.safetensors``. :func:`load_model` recognizes it by ``adapter_config.json``, so
every command that takes ``--model`` reads adapters through the same path.

The base
    ``--base PATH`` (a Hugging Face folder or ``.gguf`` file), else the config's
    ``base_model_name_or_path`` when that names a local folder or ``.gguf`` file (as given, or
    relative to the adapter folder). A hub name is never downloaded: the error says to pass
    ``--base``. The base loads through :func:`~.hf.load_hf` with all its checks.

Weights
    Only ``adapter_model.safetensors`` is read; a pickle ``adapter_model.bin`` is refused unread.
    Every tensor must land on a LoRA layer of the base with the same shape: an adapter made for
    another architecture or size is refused (target modules missing, keys left over, shapes).

Scoring
    By default the adapter is merged into the base weights (``merge_and_unload``): the engine
    then runs a plain model, with no extra low-rank products per layer, which is faster
    (``benchmarks/adapter_merge.py`` measures it). ``merge=False`` keeps the LoRA layers
    unmerged; both score the same within float rounding (a test checks 1e-3 bits).

The report (``describe()``) records the base's and the adapter's weights SHA-256 and the
adapter's ``r``, ``lora_alpha``, ``lora_dropout`` and target modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditError
from ..files import read_json, sha256_file
from . import registry
from .hf import LOAD_ERRORS, PICKLE_SUFFIXES, TOKENIZER_FILES, TRAINING_RECORD, HFModel, load_hf

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoraSettings:
    """``model.lora`` in the YAML config (``train --lora``): train a LoRA adapter instead of every weight."""

    enabled: bool = False
    r: int = field(default=8, metadata={"range": (1, 4096)})  # rank of each low-rank update
    alpha: float = field(default=16.0, metadata={"range": (1e-6, 1e6)})  # the update is scaled by alpha / r
    dropout: float = field(default=0.0, metadata={"range": (0.0, 0.95)})  # dropout on the adapter's input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = False  # write a merged model instead of an adapter folder


def wrap_lora(module: Any, lora: LoraSettings, where: str) -> Any:
    """``module`` with fresh LoRA layers (peft; A from torch's RNG, B zero): only they train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(module, config)
    except ValueError as e:  # target modules not in the model
        raise AuditError(f"model.lora.target_modules: {str(e).splitlines()[0]} ({where})") from None


def is_adapter_folder(path: Path | str) -> bool:
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


class AdapterModel(HFModel):
    """A base model with a LoRA adapter applied (merged or not), behind the scoring interface."""

    def __init__(self, *args: Any, base: HFModel, adapter: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base = base
        self.adapter = adapter

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        base = self.base.describe()
        info["kind"] = "peft-lora"
        info["description"] = (
            f"LoRA adapter (r {self.adapter['r']}, alpha {self.adapter['lora_alpha']}, "
            f"on {', '.join(self.adapter['target_modules']) or 'no modules'}) over {base['description']}"
        )
        # The weights that score are the base's plus the adapter's: both digests identify the model.
        info["weights_sha256"] = base["weights_sha256"]
        info["base"] = {k: base[k] for k in ("path", "model_class", "model_type", "weights_sha256")}
        info["adapter"] = self.adapter
        return info


def resolve_base(adapter_dir: Path, config: dict[str, Any], base: Path | str | None) -> Path:
    """The base model's local path: ``base`` if given, else the config's when it is local; never a download."""
    if base is not None:
        path = Path(base)
        if not path.exists():
            raise AuditError(f"base model {path} does not exist")
        return path
    named = config.get("base_model_name_or_path")
    if isinstance(named, str) and named:
        for candidate in (Path(named), adapter_dir / named):
            if candidate.is_dir() or (candidate.is_file() and candidate.suffix.lower() == ".gguf"):
                return candidate
    raise AuditError(
        f"adapter {adapter_dir}: its base {named!r} is not a local folder or .gguf file; "
        "pass --base PATH (nothing is downloaded)"
    )


def _adapter_weights(folder: Path) -> Path:
    weights = folder / ADAPTER_WEIGHTS
    if weights.is_file():
        return weights
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise AuditError(
            f"adapter {folder}: pickle weights ({', '.join(pickles)}) are refused because loading them can run code; "
            "save the adapter with save_pretrained(folder, safe_serialization=True)"
        )
    raise AuditError(f"adapter {folder}: no {ADAPTER_WEIGHTS}")


def _lora_config(folder: Path, raw: Any) -> Any:
    from peft import LoraConfig

    if not isinstance(raw, dict):
        raise AuditError(f"adapter {folder}: {ADAPTER_CONFIG} is not a JSON object")
    kind = raw.get("peft_type")
    if kind != "LORA":
        raise AuditError(f"adapter {folder}: peft_type {kind!r} is not supported (only LORA adapters)")
    known = set(LoraConfig.__dataclass_fields__)
    try:
        return LoraConfig(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as e:
        raise AuditError(f"adapter {folder}: {ADAPTER_CONFIG} is not a valid LoRA config ({e})") from None


def _apply(base_net: Any, config: Any, weights: dict[str, Any], folder: Path, base_path: Path) -> Any:
    """A PeftModel of ``base_net`` holding exactly the adapter's tensors, or an AuditError on any mismatch."""
    from peft import PeftModel, set_peft_model_state_dict

    mismatch = f"adapter {folder} does not fit base {base_path} ({base_net.config.model_type})"
    try:
        peft_model = PeftModel(base_net, config)
    except ValueError as e:  # target modules not found in the base
        raise AuditError(f"{mismatch}: {str(e).splitlines()[0]}") from None
    # Every LoRA tensor of the wrapped model must come from the file, and every file tensor must land.
    expected = {k for k in peft_model.state_dict() if "lora_" in k}
    try:
        result = set_peft_model_state_dict(peft_model, weights)
    except RuntimeError as e:  # size mismatch
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise AuditError(f"{mismatch}: {first}") from None
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k in expected]
    if unexpected or missing:
        what = f"tensors not in the base: {unexpected[0]}" if unexpected else f"tensors missing: {missing[0]}"
        raise AuditError(f"{mismatch}: {what} ({len(unexpected) + len(missing)} in all)")
    return peft_model


def _targets(targets: Any) -> list[str]:
    if isinstance(targets, str):  # a regular expression over module names
        return [targets]
    return sorted(targets or [])


def load_adapter(
    path: Path | str,
    *,
    base: Path | str | None = None,
    device: str = "auto",
    dtype: str | None = None,
    merge: bool = True,
) -> AdapterModel:
    """A LoRA adapter folder over its local base; every failure is a one-line AuditError."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise AuditError("PEFT adapters need peft: pip install 'exposure-audit[hf]' torch==2.13.0") from None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    raw = read_json(folder / ADAPTER_CONFIG, "adapter config")
    config = _lora_config(folder, raw)
    weights_file = _adapter_weights(folder)
    base_path = resolve_base(folder, raw, base)
    if is_adapter_folder(base_path):
        raise AuditError(f"base {base_path} is itself an adapter folder; give the model it was trained on")
    base_model = load_hf(base_path, device=device, dtype=dtype)
    try:
        weights = load_file(weights_file, device=str(base_model.device))
    except (SafetensorError, OSError, ValueError) as e:
        raise AuditError(f"adapter {folder}: cannot read {ADAPTER_WEIGHTS} ({str(e).splitlines()[0]})") from None
    weights = {k: v.to(base_model.dtype) for k, v in weights.items()}
    peft_model = _apply(base_model.model, config, weights, folder, base_path)
    net = peft_model.merge_and_unload() if merge else peft_model.base_model.model
    net.eval()
    tokenizer = base_model.tokenizer
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except LOAD_ERRORS as e:
            raise AuditError(f"adapter {folder}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None
    training = read_json(folder / TRAINING_RECORD, "training record") if (folder / TRAINING_RECORD).is_file() else None
    info = {
        "path": str(folder),
        "peft_type": "LORA",
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": _targets(config.target_modules),
        "weights_sha256": sha256_file(weights_file),
        "merged": merge,
    }
    return AdapterModel(
        net,
        tokenizer,
        path=folder,
        weight_files=base_model._weight_files,
        training=training,
        base=base_model,
        adapter=info,
    )


# -- the kind (models/registry.py) --------------------------------------------------------
def _load(path: Path, *, device: str = "auto", dtype: str | None = None, base: Path | str | None = None):
    return load_adapter(path, base=base, device=device, dtype=dtype)


def _check(cfg: Any) -> None:
    """``model.lora``: training a LoRA adapter needs a kind built of layers peft adapts."""
    m, lora = cfg.model, cfg.model.lora
    if lora.enabled and not registry.get(m.kind).adaptable:
        names = " or ".join(k.name for k in registry.kinds() if k.adaptable)
        label = registry.get(m.kind).label
        raise AuditError(f"model.lora: LoRA needs model.kind: {names} (the {label} has no layers peft can adapt)")
    if lora.merge and not lora.enabled:
        raise AuditError("model.lora.merge: only meaningful with model.lora.enabled (--lora)")
    if lora.enabled and cfg.train.dp.enabled:
        raise AuditError(
            "model.lora with train.dp: DP-SGD on LoRA adapters is not supported yet (docs/models.md says why)"
        )


KIND = registry.register(
    registry.Kind(
        "peft-lora",
        title="PEFT LoRA adapter",
        section="lora",  # model.lora: train a LoRA adapter (a transformer's) instead of every weight
        settings=LoraSettings,
        check=_check,
        detect=is_adapter_folder,
        load=_load,
        priority=10,
        takes_base=True,  # load_adapter says what to install when peft is missing
    )
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterModel",
    "LoraSettings",
    "wrap_lora",
    "is_adapter_folder",
    "load_adapter",
    "resolve_base",
]
