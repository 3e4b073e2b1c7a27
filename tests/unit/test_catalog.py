"""The shipped catalog and voicepacks: every entry is servable by an installed family or says
why not, LoRA voices name a base that exists, and missing extras name their install command."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from duplexd.config import repo_root
from duplexd.errors import ConfigError, ModelLoadError
from duplexd.tts.adapters.base import require_extra
from duplexd.tts.adapters.registry import GROUP, adapter_class
from duplexd.tts.catalog import Catalog

ROOT = repo_root()


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(ROOT / "configs/model_catalog.yaml", ROOT / "voicepacks")


def test_every_entry_has_an_adapter_or_a_reason(catalog: Catalog) -> None:
    families = {ep.name for ep in entry_points(group=GROUP)}
    for meta in catalog:
        if meta.unavailable:
            assert meta.family not in families, f"{meta.model_id}: unavailable but adapter exists"
            continue
        assert meta.family in families, f"{meta.model_id}: no adapter for {meta.family}"
        cls = adapter_class(meta.family)  # imports the module; engines stay lazy
        assert cls.family == meta.family


def test_the_neural_families_and_lora_voices_are_listed(catalog: Catalog) -> None:
    ids = set(catalog.ids())
    for model_id in ("xtts-v2-en", "sesame-csm-1b", "kokoro-82m-ja", "spark-tts-0.5b"):
        assert model_id in ids
    loras = [m for m in catalog if m.is_lora]
    assert {m.model_id for m in loras} >= {"sesame-unsloth-lora01", "sesame-unsloth-lora02"}
    for lora in loras:
        assert lora.base_model in ids and catalog.get(lora.base_model).supports_lora
        assert lora.family == catalog.get(lora.base_model).family
    melo = catalog.get("melotts-en")
    assert melo.unavailable and "transformers==4.27.4" in melo.unavailable


def test_a_missing_extra_names_the_install_command() -> None:
    with pytest.raises(ModelLoadError) as info:
        require_extra("xtts", "json", "duplex_no_such_engine_module")
    message = str(info.value)
    assert "'duplex_no_such_engine_module'" in message
    assert "uv sync --extra xtts" in message and "pip install 'duplex[xtts]'" in message


def test_bad_checksums_in_a_catalog_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "models:\n  - model_id: x\n    family: piper\n    native_sr: 22050\n    sha256: nothex\n"
    )
    with pytest.raises(ConfigError, match="sha256"):
        Catalog.load(path, None)


def test_a_missing_engine_is_refused_before_any_import_or_memory_check() -> None:
    # parler-tts lives in its own environment (scripts/engine-env.sh), never in this one
    with pytest.raises(ModelLoadError, match=r"'parler_tts': not installed.*engine-env\.sh parler"):
        adapter_class("parler").check_engine()
    for family in ("xtts", "csm", "kokoro", "spark"):  # the dev environment has every extra
        adapter_class(family).check_engine()
