"""The prep config: one YAML file for the whole chain, a section per verb (`ingest:`, `generate:`, ...).

Read like every config (`tunesmith.config.read_config`): the whole file is validated by every verb, so a typo in
any section is reported at once, with its line; `--set generate.teacher.concurrency=8` names a setting by its
path from the top of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import Strict, read_config
from tunesmith.data.prep.anonymize import AnonymizeConfig
from tunesmith.data.prep.augment import AugmentConfig
from tunesmith.data.prep.ingest import IngestConfig
from tunesmith.data.prep.relabel import RelabelConfig
from tunesmith.data.prep.split import SplitConfig
from tunesmith.data.prep.synthesize import GenerateConfig


class PrepConfig(Strict):
    ingest: IngestConfig = IngestConfig()
    anonymize: AnonymizeConfig = AnonymizeConfig()
    generate: GenerateConfig = GenerateConfig()
    augment: AugmentConfig = AugmentConfig()
    split: SplitConfig = SplitConfig()
    relabel: RelabelConfig = RelabelConfig()


def step_settings(step: str, config: Path | None, overrides: list[str] | None, options: dict[str, Any]):
    """The `step` section of the prep config, after --set overrides and the verb's own options (dotted paths)."""
    return getattr(read_config(PrepConfig, config, overrides or [], options=options), step)
