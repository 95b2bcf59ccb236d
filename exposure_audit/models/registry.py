"""The model kinds: one place knows them, the rest asks it (a plain ``register``/``get``, like
lm-eval-harness's ``api/registry.py``).

A kind's own module in ``models/`` registers it when ``models/`` is imported (``models/__init__``
imports every module of the folder), so a new kind is one new file and nothing else (it imports
its optional packages inside functions, so importing it never fails). A :class:`Kind` says what
it is; every part is optional:

- its config section ``model.<section>`` (a dataclass; a field's ``metadata["range"]`` bounds it),
  ``legacy`` keys of ``model:`` that moved into that section (still read, with a note), and
  ``check(cfg)`` for checks across keys;
- ``detect(path)`` and ``load(path, device=, dtype=, base=)``: a checkpoint of this kind (kinds are
  asked in ``priority`` order; ``fallback`` loads what no kind claims, and names what is wrong);
- ``tokenize`` and ``trainee`` (``models/training.py``'s contract): a kind ``train`` can build
  (``model.kind``); ``fine_tunes`` when it can start from ``model.base``, ``adaptable`` when
  peft can train a LoRA adapter on it (``model.lora``), ``fresh`` the dp-audit canary design
  whose fresh symbols it takes (``new-char``: characters, ``new-token``: tokenizer entries);
- ``describe(model_cfg)``: the one-line description of such a model in an audit's report.

This module imports nothing of torch or of the kinds, so the config schema can ask it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditError

DEVICES = ("auto", "cpu", "cuda")  # where a model runs (``--device``)
DTYPES = ("float32", "bfloat16", "float16")  # a model's weights (``--dtype``)


@dataclass(frozen=True)
class Kind:
    name: str
    title: str = ""  # in sentences ("char-LSTM"); default: the name
    # the config: model.<section> holds ``settings``; ``legacy`` keys of model: moved there
    section: str | None = None
    settings: type | None = None
    legacy: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None  # (the whole AuditConfig) -> None or AuditError
    # loading a checkpoint
    detect: Callable[[Path], bool] | None = None
    load: Callable[..., Any] | None = None  # (path, *, device, dtype, base) -> LanguageModel
    priority: int = 50  # lower is asked first
    fallback: bool = False  # loads whatever no kind detects (its loader says what is wrong)
    takes_base: bool = False  # load() takes a base model (--base)
    requires: tuple[str, ...] = ()  # import names load() needs, and what to install when missing
    install: str = ""
    # training
    tokenize: Callable[..., Any] | None = None
    trainee: Callable[..., Any] | None = None
    fine_tunes: bool = False  # trains from model.base
    adaptable: bool = False  # peft can put LoRA layers on it (model.lora)
    fresh: str = ""  # dp-audit's fresh-symbol design for it: new-char (characters) or new-token (tokens)
    describe: Callable[[Any], str] | None = None  # (model_cfg) -> the audit's one-line description
    default: bool = False  # the kind model.kind names by default

    @property
    def label(self) -> str:
        return self.title or self.name


_KINDS: dict[str, Kind] = {}
_MODEL_CONFIG: list[type] = []  # the model: dataclass for the kinds registered so far (a cache)


def register(kind: Kind) -> Kind:
    """Add ``kind`` (a name registered twice is a bug); returns it."""
    if kind.name in _KINDS:
        raise ValueError(f"model kind {kind.name!r} is registered twice")
    sections = {k.section for k in _KINDS.values() if k.section}
    if kind.section and (kind.section in sections or kind.section in _COMMON):
        raise ValueError(f"model kind {kind.name!r}: section model.{kind.section} is taken")
    _KINDS[kind.name] = kind
    _MODEL_CONFIG.clear()
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests register fakes and take them away again)."""
    _KINDS.pop(name, None)
    _MODEL_CONFIG.clear()


def get(name: str) -> Kind:
    """The kind called ``name``, or an AuditError naming the kinds ``train`` can build."""
    kind = _KINDS.get(name)
    if kind is None or kind.trainee is None:
        raise AuditError(f"model.kind: {name!r} is not one of {', '.join(trainable())}")
    return kind


def kinds() -> list[Kind]:
    """Every registered kind, in registration order."""
    return list(_KINDS.values())


def trainable() -> tuple[str, ...]:
    """The kinds ``train`` can build (``model.kind``, ``--kind``), in registration order."""
    return tuple(k.name for k in _KINDS.values() if k.trainee is not None)


def kind_for(kind: str | None, base: str | None) -> str | None:
    """``train``'s kind: as asked, else with a base model the first kind that fine-tunes one
    (None: the config's)."""
    if kind is None and base:
        return next((k.name for k in _KINDS.values() if k.fine_tunes), None)
    return kind


def default_kind() -> str:
    return next((k.name for k in _KINDS.values() if k.default), trainable()[0] if trainable() else "")


def detect(path: Path) -> Kind:
    """The kind whose checkpoint ``path`` is (the fallback when none claims it)."""
    loaders = sorted((k for k in _KINDS.values() if k.load is not None), key=lambda k: k.priority)
    for kind in loaders:
        if kind.detect is not None and kind.detect(path):
            return kind
    for kind in loaders:
        if kind.fallback:
            return kind
    raise AuditError(f"model {path}: no model kind reads it")


def check_requirements(kind: Kind) -> None:
    """An AuditError with what to install when a package ``kind`` needs is missing."""
    if any(importlib.util.find_spec(name) is None for name in kind.requires):
        raise AuditError(kind.install or f"{kind.label} models need {', '.join(kind.requires)}")


# -- the model: section of the YAML config --------------------------------------------------
@dataclass
class ModelCommon:
    """The kind-neutral keys of ``model:``; each kind's own keys are under ``model.<section>``."""

    kind: str = field(default_factory=lambda: default_kind())
    dropout: float = field(default=0.0, metadata={"range": (0.0, 0.95)})  # char-lstm between layers; attention
    base: str | None = None  # a kind that fine_tunes: start from this local model instead of fresh weights


_COMMON = {f.name for f in dataclasses.fields(ModelCommon)}


def model_config_class() -> type:
    """The ``model:`` section's dataclass: :class:`ModelCommon` plus one field per kind's section."""
    if not _MODEL_CONFIG:
        sections = [
            (k.section, k.settings, field(default_factory=k.settings))
            for k in _KINDS.values()
            if k.section and k.settings is not None
        ]
        cls = dataclasses.make_dataclass("ModelConfig", sections, bases=(ModelCommon,))
        cls.__module__ = __name__
        cls.__doc__ = "``model:`` in the YAML config: the kind-neutral keys and each kind's section."
        _MODEL_CONFIG.append(cls)
    return _MODEL_CONFIG[0]


def upgrade(section: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``model:`` with keys of the old flat layout moved into their kind's section (a key given
    flat wins over the same key in the section), and the keys moved as (old, new) names (empty:
    nothing was old)."""
    moved: list[tuple[str, str]] = []
    out = dict(section)
    for kind in _KINDS.values():
        flat = [key for key in kind.legacy if key in out]
        if not flat or not kind.section:
            continue
        inner = out.get(kind.section)
        inner = dict(inner) if isinstance(inner, dict) else {}
        for key in flat:
            inner[key] = out.pop(key)
        out[kind.section] = inner
        moved += [(f"model.{key}", f"model.{kind.section}.{key}") for key in flat]
    return out, moved


def check_config(cfg: Any) -> None:
    """The model section's checks across keys: the kind, its base, then each kind's own checks."""
    m = cfg.model
    kind = get(m.kind)
    if m.base and not kind.fine_tunes:
        names = " or ".join(k.name for k in _KINDS.values() if k.fine_tunes)
        raise AuditError(f"model.base: fine-tuning a base model needs model.kind: {names}")
    for k in _KINDS.values():
        if k.check is not None:
            k.check(cfg)


def describe_config(model_cfg: Any) -> str:
    """The audit's one-line description of the model ``model_cfg`` trains."""
    kind = get(model_cfg.kind)
    return kind.describe(model_cfg) if kind.describe is not None else kind.label


__all__ = [
    "DEVICES",
    "DTYPES",
    "Kind",
    "ModelCommon",
    "check_config",
    "check_requirements",
    "default_kind",
    "describe_config",
    "detect",
    "get",
    "kind_for",
    "kinds",
    "model_config_class",
    "register",
    "trainable",
    "unregister",
    "upgrade",
]
