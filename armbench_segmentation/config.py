"""Settings: one frozen object built from the packaged YAML and the user's overrides.

Precedence (later wins): packaged defaults < user config file < environment < CLI flags.
Nothing is written anywhere: loading settings has no side effects.

Every field declares its constraint next to it (``field(metadata=_rule(...))``): a type,
a range, a set of choices. :func:`load_settings` checks all of them before any work starts
and raises :class:`ConfigError` naming the key, the valid range or choices, the value and
where it came from, e.g. ``model.conf_threshold must be in [0, 1], got 7 (from --conf-threshold)``.
Choices of the analysis methods are the names the registries implementing them register.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from armbench_segmentation.errors import ConfigError
from armbench_segmentation.splits import UNLABELED

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
DEFAULT_DATASET_DIR = PACKAGE_DIR / "dataset"
DEFAULT_MODEL_PATH = PROJECT_DIR / "models" / "armbench-yolov5s-seg.onnx"
USER_CONFIG_PATH = Path(os.path.expanduser("~/.config/armbench-segmentation/config.yaml"))

# environment variable -> dotted settings key
ENV_OVERRIDES: dict[str, str] = {
    "ARMBENCH_DATASET": "data.path",
    "ARMBENCH_MODEL": "model.path",
    "ARMBENCH_TRAIN_SIZE": "data.train_size",
    "ARMBENCH_VAL_SIZE": "data.val_size",
    "ARMBENCH_UNLABELED_SIZE": "data.unlabeled_size",
    "ARMBENCH_DEVICE": "model.device",
    "ARMBENCH_NUM_THREADS": "model.num_threads",
}

DEVICES = ("auto", "cpu", "cuda")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
DEFAULTS_SOURCE = "packaged defaults"


# ---------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class Rule:
    """The constraint of one setting.

    Attributes:
        kind: ``int``, ``float``, ``bool``, ``str`` (one of ``choices``), ``path``,
            ``names`` (non-empty list of distinct names) or ``size`` (int or "all" -> None).
        low, high: inclusive bounds (None = unbounded); ``low_open``/``high_open`` exclude them.
        nullable: None (YAML null) is a valid value.
        choices: valid strings, or a callable returning them (read lazily from a registry).
        note: what None or a special value means, shown in the message.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    note: str = ""

    def choice_names(self) -> tuple[str, ...]:
        names = self.choices() if callable(self.choices) else self.choices
        return tuple(sorted(str(n) for n in (names or ())))

    def describe(self) -> str:
        """The valid values in words: 'in [0, 1]', 'an integer >= 1', 'one of [...]'."""
        if self.kind == "bool":
            text = f"true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)})"
        elif self.kind == "str":
            text = f"one of {list(self.choice_names())}"
        elif self.kind == "path":
            text = "a file or folder path"
        elif self.kind == "names":
            text = "a non-empty list of distinct names"
        else:
            noun = "a number" if self.kind == "float" else "an integer"
            if self.low is not None and self.high is not None:
                text = (f"{noun} in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                        f"{')' if self.high_open else ']'}")
            elif self.low is not None:
                text = f"{noun} {'>' if self.low_open else '>='} {_num(self.low)}"
            elif self.high is not None:
                text = f"{noun} {'<' if self.high_open else '<='} {_num(self.high)}"
            else:
                text = noun
            if self.kind == "size":
                text += " or 'all'"
        if self.nullable and self.kind != "size":
            text += " or null"
        return text + (f" ({self.note})" if self.note else "")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _rule(kind: str, **kw: Any) -> dict[str, Rule]:
    return {"rule": Rule(kind, **kw)}


# The analysis methods by name. The registries that implement them (analysis.projection,
# analysis.clustering, analysis.selection) must register exactly these (tests/test_config.py
# checks it); config does not import them: loading settings stays cheap and the Tensorleap
# bundle, which has no analysis engine, can check every setting.
PROJECTION_NAMES = ("pca", "tsne", "umap")
CLUSTERING_NAMES = ("hdbscan", "kmeans")
LABEL_STRATEGY_NAMES = ("combined", "count", "diversity", "entropy", "least_confidence", "loss_neighbourhood",
                        "margin")

_UNIT = dict(low=0.0, high=1.0)
_SIZE = _rule("size", low=0, note="0 skips the split, 'all' takes every image")


@dataclass(frozen=True)
class DataConfig:
    path: Path = field(default=DEFAULT_DATASET_DIR, metadata=_rule("path", nullable=True))
    class_names: tuple[str, ...] = field(default=("Object", "Tote"), metadata=_rule("names"))
    train_size: int | None = field(default=1000, metadata=_SIZE)
    val_size: int | None = field(default=1000, metadata=_SIZE)
    unlabeled_size: int | None = field(default=1000, metadata=_SIZE)
    seed: int = field(default=0, metadata=_rule("int", low=0))
    image_size: int = field(default=640, metadata=_rule("int", low=32, high=8192))
    max_instances: int | None = field(default=None, metadata=_rule("int", low=1, nullable=True,
                                                                    note="null = derived from the data"))
    reduced_decode: bool = field(default=True, metadata=_rule("bool"))

    def split_size(self, split: str) -> int | None:
        return {"train": self.train_size, "val": self.val_size, UNLABELED: self.unlabeled_size}[split]


@dataclass(frozen=True)
class ModelConfig:
    path: Path = field(default=DEFAULT_MODEL_PATH, metadata=_rule("path", nullable=True))
    conf_threshold: float = field(default=0.25, metadata=_rule("float", **_UNIT))
    iou_threshold: float = field(default=0.45, metadata=_rule("float", **_UNIT))
    max_detections: int = field(default=300, metadata=_rule("int", low=1))
    mask_threshold: float = field(default=0.5, metadata=_rule("float", **_UNIT))
    num_threads: int | None = field(default=None, metadata=_rule("int", low=0, nullable=True,
                                                                  note="null or 0 = onnxruntime's default"))
    device: str = field(default="auto", metadata=_rule("str", choices=DEVICES))
    batch_size: int = field(default=1, metadata=_rule("int", low=1))
    intra_op_spinning: bool = field(default=False, metadata=_rule("bool"))


@dataclass(frozen=True)
class MetricsConfig:
    ioa_threshold: float = field(default=0.8, metadata=_rule("float", low=0.0, high=1.0, low_open=True))
    segmentation_classes: tuple[str, ...] = field(default=("Object",), metadata=_rule("names"))
    match_iou: float = field(default=0.5, metadata=_rule("float", low=0.0, high=1.0, low_open=True))
    duplicate_iou: float = field(default=0.85, metadata=_rule("float", low=0.0, high=1.0, low_open=True))
    small_area_fraction: float = field(default=0.005, metadata=_rule("float", **_UNIT))
    low_confidence: float = field(default=0.5, metadata=_rule("float", **_UNIT))


@dataclass(frozen=True)
class AnalysisConfig:
    projection: str = field(default="tsne", metadata=_rule("str", choices=PROJECTION_NAMES))
    clustering: str = field(default="kmeans", metadata=_rule("str", choices=CLUSTERING_NAMES))
    n_clusters: int = field(default=8, metadata=_rule("int", low=1))
    label_budget: int = field(default=50, metadata=_rule("int", low=0))
    label_strategy: str = field(default="combined", metadata=_rule("str", choices=LABEL_STRATEGY_NAMES))
    prune_keep_fraction: float = field(default=0.8, metadata=_rule("float", low=0.0, high=1.0, low_open=True))
    gallery_size: int = field(default=12, metadata=_rule("int", low=1))


@dataclass(frozen=True)
class Settings:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def replace(self, overrides: Mapping[str, Any]) -> "Settings":
        """A copy with dotted-key overrides applied, e.g. ``{"data.path": "/x"}`` (checked)."""
        sources: dict[str, str] = {}
        values = _merge(self.to_dict(), _nest(overrides), source="overrides", sources=sources)
        return _build(values, sources)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for section in out.values():
            for k, v in section.items():
                if isinstance(v, Path):
                    section[k] = str(v)
                elif isinstance(v, tuple):
                    section[k] = list(v)
        return out

    def fingerprint(self) -> str:
        """Stable hash of everything that changes per-sample results (for caches)."""
        import hashlib
        import json

        d = self.to_dict()
        relevant = {"data": {k: d["data"][k] for k in ("class_names", "image_size", "reduced_decode")},
                    "model": {k: v for k, v in d["model"].items() if k not in ("path", "num_threads", "device", "batch_size",
                                                                                "intra_op_spinning")},
                    "metrics": d["metrics"]}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "metrics": MetricsConfig, "analysis": AnalysisConfig}


def rules() -> dict[str, Rule]:
    """Dotted key -> the Rule of every setting."""
    return {f"{section}.{f.name}": f.metadata["rule"]
            for section, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if "." not in key:
            raise ConfigError(f"override key {key!r} must be 'section.name', e.g. 'data.path'")
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any], source: str = "overrides",
           sources: dict[str, str] | None = None, key_sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``base`` with ``extra``'s sections merged in; ``sources`` records where each key came
    from (``key_sources`` can name it per dotted key, e.g. the flag)."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in (extra or {}).items():
        if section not in _SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r}; valid sections: {sorted(_SECTIONS)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: section {section!r} must be a mapping, got {type(values).__name__}")
        valid = {f.name for f in dataclasses.fields(_SECTIONS[section])}
        for name, value in values.items():
            if name not in valid:
                raise ConfigError(f"{source}: unknown key {section}.{name}; valid keys: {sorted(valid)}")
            out[section][name] = value
            if sources is not None:
                sources[f"{section}.{name}"] = (key_sources or {}).get(f"{section}.{name}", source)
    return out


class _Invalid(Exception):
    """A value outside its rule (turned into a ConfigError with the key and source)."""


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise _Invalid
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not v.is_integer():
            raise _Invalid
        return int(v)
    if isinstance(v, str):
        text = v.strip()
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise _Invalid from None
            if not f.is_integer():
                raise _Invalid from None
            return int(f)
    raise _Invalid


def _to_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _Invalid
    try:
        f = float(v.strip() if isinstance(v, str) else v)
    except ValueError:
        raise _Invalid from None
    if not math.isfinite(f):
        raise _Invalid
    return f


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        word = v.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise _Invalid


def _to_names(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = v.split(",")
    if not isinstance(v, (list, tuple)):
        raise _Invalid
    names = tuple(str(n).strip() for n in v)
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise _Invalid
    return names


def _in_range(rule: Rule, x: float) -> bool:
    if rule.low is not None and (x < rule.low or (rule.low_open and x == rule.low)):
        return False
    if rule.high is not None and (x > rule.high or (rule.high_open and x == rule.high)):
        return False
    return True


def check_value(key: str, value: Any, rule: Rule, source: str = DEFAULTS_SOURCE) -> Any:
    """``value`` converted to the rule's type, or ConfigError naming ``key``, the valid values,
    the value received and its ``source``."""
    def bad() -> ConfigError:
        return ConfigError(f"{key} must be {rule.describe()}, got {value!r} (from {source})")

    if value is None or (rule.kind == "size" and isinstance(value, str) and value.strip().lower() == "all"):
        if rule.nullable or rule.kind == "size":
            return None
        raise bad()
    try:
        if rule.kind == "path":
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise _Invalid
            return Path(os.path.expanduser(str(value)))
        if rule.kind == "names":
            return _to_names(value)
        if rule.kind == "bool":
            return _to_bool(value)
        if rule.kind == "str":
            if not isinstance(value, str):
                raise _Invalid
            word = value.strip().lower()
            if word not in rule.choice_names():
                raise _Invalid
            return word
        number: float = _to_float(value) if rule.kind == "float" else _to_int(value)
    except _Invalid:
        raise bad() from None
    if not _in_range(rule, number):
        raise bad()
    return number


def _coerce(section: str, cls: type, values: dict[str, Any], sources: Mapping[str, str]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        key = f"{section}.{f.name}"
        v = check_value(key, values[f.name], f.metadata["rule"], sources.get(key, DEFAULTS_SOURCE))
        if v is None and f.metadata["rule"].kind == "path":
            continue  # keep the default location
        kwargs[f.name] = v
    return cls(**kwargs)


def _build(values: dict[str, Any], sources: Mapping[str, str] | None = None) -> Settings:
    sources = sources or {}
    settings = Settings(**{name: _coerce(name, cls, values.get(name, {}), sources) for name, cls in _SECTIONS.items()})
    m = settings.metrics
    unknown = set(m.segmentation_classes) - set(settings.data.class_names)
    if unknown:
        raise ConfigError(f"metrics.segmentation_classes {sorted(unknown)} not in data.class_names "
                          f"{list(settings.data.class_names)} (from {sources.get('metrics.segmentation_classes', DEFAULTS_SOURCE)}); "
                          f"use names of data.class_names")
    return settings


def default_values() -> dict[str, Any]:
    text = resources.files("armbench_segmentation").joinpath("default_config.yaml").read_text()
    return yaml.safe_load(text)


def _read_user_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, model:, ...)")
    return loaded


def load_settings(
    config_path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    override_sources: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings: defaults < user file < environment < ``overrides`` (CLI flags).

    Every value is checked against its field's :class:`Rule` here, before any work.

    Args:
        config_path: a user YAML; default ``$ARMBENCH_CONFIG`` or
            ``~/.config/armbench-segmentation/config.yaml`` when it exists.
        overrides: dotted keys from CLI flags, e.g. ``{"data.path": "/data/armbench"}``;
            None values are ignored (flag not given).
        env: environment mapping (default ``os.environ``).
        override_sources: dotted key -> how the user gave it (e.g. ``"--conf-threshold"``),
            named in error messages; default "command line".
    Raises:
        ConfigError: unreadable file, unknown key, or a value outside its rule.
    """
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    values = default_values()
    if config_path is None and env.get("ARMBENCH_CONFIG"):
        config_path = env["ARMBENCH_CONFIG"]
    if config_path is not None:
        path = Path(config_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = _merge(values, _read_user_file(path), source=str(path), sources=sources)
    elif USER_CONFIG_PATH.is_file():
        values = _merge(values, _read_user_file(USER_CONFIG_PATH), source=str(USER_CONFIG_PATH), sources=sources)
    for var, key in ENV_OVERRIDES.items():
        if env.get(var):
            values = _merge(values, _nest({key: env[var]}), source=f"environment variable {var}", sources=sources)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = _merge(values, _nest(flags), source="command line", sources=sources, key_sources=override_sources)
    return _build(values, sources)
