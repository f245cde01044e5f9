"""`tunesmith ui` settings: where it listens, which folders it may read and run in, the chat playground's limits.

Read by `tunesmith.config.read_config` like every config (`tunesmith ui ui.yaml --set port=8080`), or given as
options (`tunesmith ui --project . --runs runs`).
"""

from __future__ import annotations

from pydantic import Field

from tunesmith.config import Strict
from tunesmith.models.precision import Precision


class UiConfig(Strict):
    host: str = Field("127.0.0.1", description="Address to listen on; any other than loopback needs the access token")
    port: int = Field(7860, ge=0, le=65535)
    project: str = Field(".", description="The project folder: configs, data and models are read from it and every "
                                          "command runs in it")
    runs: list[str] = Field(default_factory=lambda: ["runs"], description="Folders holding run folders and eval "
                            "reports (relative to the project); new runs and reports go into the first")
    allow: list[str] = Field(default_factory=list, description="Other folders the UI may read (models, data sets)")
    max_jobs: int = Field(1, ge=1, description="Trainings and evaluations running at once (each is a subprocess)")
    chat_models: int = Field(2, ge=1, description="Models the chat playground keeps loaded (least recently used goes)")
    device: str = Field("auto", description="Device of the chat playground's models")
    precision: Precision = "auto"
    max_request_bytes: int = Field(2_000_000, ge=1024)
