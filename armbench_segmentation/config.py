"""Settings: one frozen object built from the packaged YAML and the user's overrides.

Precedence (later wins): packaged defaults < user config file < environment < CLI flags.
Nothing is written anywhere: loading settings has no side effects.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from armbench_segmentation.errors import ConfigError

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


def _size(value: Any, key: str) -> int | None:
    """Split sizes: a positive int, or "all"/None for the whole file (returned as None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a positive integer or 'all', got {value!r}") from None
    if n < 0:
        raise ConfigError(f"{key} must be >= 0 or 'all', got {n}")
    return n


@dataclass(frozen=True)
class DataConfig:
    path: Path = DEFAULT_DATASET_DIR
    class_names: tuple[str, ...] = ("Object", "Tote")
    train_size: int | None = 1000
    val_size: int | None = 1000
    unlabeled_size: int | None = 1000
    seed: int = 0
    image_size: int = 640
    max_instances: int | None = None
    reduced_decode: bool = True

    def split_size(self, split: str) -> int | None:
        return {"train": self.train_size, "val": self.val_size, "unlabeled": self.unlabeled_size}[split]


@dataclass(frozen=True)
class ModelConfig:
    path: Path = DEFAULT_MODEL_PATH
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    mask_threshold: float = 0.5
    num_threads: int | None = None
    device: str = "auto"
    batch_size: int = 1
    intra_op_spinning: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    ioa_threshold: float = 0.8
    segmentation_classes: tuple[str, ...] = ("Object",)
    match_iou: float = 0.5
    duplicate_iou: float = 0.85
    small_area_fraction: float = 0.005
    low_confidence: float = 0.5


@dataclass(frozen=True)
class AnalysisConfig:
    projection: str = "pca"
    clustering: str = "kmeans"
    n_clusters: int = 8
    label_budget: int = 50
    label_strategy: str = "combined"
    prune_keep_fraction: float = 0.8
    gallery_size: int = 12


@dataclass(frozen=True)
class Settings:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def replace(self, overrides: Mapping[str, Any]) -> "Settings":
        """A copy with dotted-key overrides applied, e.g. ``{"data.path": "/x"}``."""
        return _build(_merge(self.to_dict(), _nest(overrides)))

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


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if "." not in key:
            raise ConfigError(f"override key {key!r} must be 'section.name', e.g. 'data.path'")
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any], source: str = "overrides") -> dict[str, Any]:
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
    return out


def _coerce(cls: type, values: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        key = f"{cls.__name__}.{f.name}"
        if f.name in ("train_size", "val_size", "unlabeled_size"):
            v = _size(v, f.name)
        elif f.name == "path":
            v = None if v is None else Path(os.path.expanduser(str(v)))
        elif isinstance(f.default, tuple) or f.name in ("class_names", "segmentation_classes"):
            v = tuple(v) if isinstance(v, (list, tuple)) else tuple(str(v).split(","))
        elif isinstance(f.default, bool):
            v = v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(f.default, float):
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number, got {v!r}") from None
        elif isinstance(f.default, int) or f.name in ("num_threads", "max_instances"):
            if v is not None:
                try:
                    v = int(v)
                except (TypeError, ValueError):
                    raise ConfigError(f"{key} must be an integer, got {v!r}") from None
        if v is None and f.name == "path":
            continue  # keep the default location
        kwargs[f.name] = v
    return cls(**kwargs)


def _build(values: dict[str, Any]) -> Settings:
    settings = Settings(**{name: _coerce(cls, values.get(name, {})) for name, cls in _SECTIONS.items()})
    m = settings.metrics
    if not 0 < m.ioa_threshold <= 1:
        raise ConfigError(f"metrics.ioa_threshold must be in (0, 1], got {m.ioa_threshold}")
    unknown = set(m.segmentation_classes) - set(settings.data.class_names)
    if unknown:
        raise ConfigError(f"metrics.segmentation_classes {sorted(unknown)} not in data.class_names {list(settings.data.class_names)}")
    return settings


def default_values() -> dict[str, Any]:
    text = resources.files("armbench_segmentation").joinpath("default_config.yaml").read_text()
    return yaml.safe_load(text)


def _read_user_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, model:, ...)")
    return loaded


def load_settings(
    config_path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings: defaults < user file < environment < ``overrides`` (CLI flags).

    Args:
        config_path: a user YAML; default ``$ARMBENCH_CONFIG`` or
            ``~/.config/armbench-segmentation/config.yaml`` when it exists.
        overrides: dotted keys from CLI flags, e.g. ``{"data.path": "/data/armbench"}``;
            None values are ignored (flag not given).
        env: environment mapping (default ``os.environ``).
    """
    env = os.environ if env is None else env
    values = default_values()
    if config_path is None and env.get("ARMBENCH_CONFIG"):
        config_path = env["ARMBENCH_CONFIG"]
    if config_path is not None:
        path = Path(config_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = _merge(values, _read_user_file(path), source=str(path))
    elif USER_CONFIG_PATH.is_file():
        values = _merge(values, _read_user_file(USER_CONFIG_PATH), source=str(USER_CONFIG_PATH))
    env_flat = {key: env[var] for var, key in ENV_OVERRIDES.items() if env.get(var)}
    values = _merge(values, _nest(env_flat), source="environment")
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = _merge(values, _nest(flags), source="command line")
    return _build(values)
