"""Every YAML config shipped under configs/ and examples/ validates against the config it is for, and the data
files it names exist (or are made by the example's own script). A renamed setting cannot break one silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunesmith.config import RunConfig, read_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for folder in ("configs", "examples") for p in (ROOT / folder).rglob("*.yaml"))
# written by examples/docs-to-dataset/run.sh; under runs/ by a command the config's comment names
# (`make pii-tagger`: tunesmith.data.prep.pii_tagger_data; `tunesmith data relabel` for sequence-level KD)
MADE_BY_SCRIPTS = ("examples/docs-to-dataset/work/", "runs/")


def config_model(path: Path):
    """Which config a file is: the eval and prep configs by name, guardrails by folder, every other one a run config."""
    from tunesmith.data.prep.config import PrepConfig
    from tunesmith.eval.config import EvalConfig
    from tunesmith.guardrails.config import GuardrailsConfig

    if "guardrails" in path.parent.parts:
        return GuardrailsConfig
    if path.stem.startswith("eval"):
        return EvalConfig
    if path.stem.startswith("prep"):
        return PrepConfig
    return RunConfig


def test_there_are_shipped_configs():
    assert {p.name for p in SHIPPED} >= {"dblp-quad-lora.yaml", "eval.yaml", "prep.yaml", "train.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_is_valid_and_its_data_exists(path):
    cfg = read_config(config_model(path), path)
    sections = [getattr(cfg, "data", None)] + [stage.data for stage in getattr(cfg, "stages", None) or []]
    for data in sections:
        for name in ("train", "valid", "test"):
            file = getattr(data, name, None) if data is not None else None
            if file and not file.startswith(MADE_BY_SCRIPTS):
                assert (ROOT / file).is_file(), f"{path.relative_to(ROOT)}: data.{name} {file} does not exist"


def test_every_section_of_the_prep_example_is_known():
    """The prep config is validated whole: no section of the example is silently ignored."""
    from tunesmith.data.prep.config import PrepConfig

    prep = ROOT / "examples" / "docs-to-dataset" / "prep.yaml"
    assert set(yaml.safe_load(prep.read_text())) <= set(PrepConfig.model_fields)
