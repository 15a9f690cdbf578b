"""One adapter per model family behind the engine's TrainModel interface, and the lookup from the
loaded model's family to its adapter. common.py holds what the families share."""
from __future__ import annotations

from ...errors import UserError
from .common import WebUIAdapter, model_family
from .sd1 import SD1Model

ADAPTERS: dict[str, type[WebUIAdapter]] = {"sd1": SD1Model}


def adapter_for(sd_model, clip_skip: int | None = None) -> WebUIAdapter:
    """The adapter for the WebUI's loaded model; a clear UserError for a family not trained yet."""
    family = model_family(sd_model)
    adapter = ADAPTERS.get(family)
    if adapter is None:
        raise UserError(f"the loaded checkpoint is {family.upper()}; this version trains SD1.x models only.",
                        fix="load an SD1.x checkpoint (e.g. SD1.5) in the WebUI's checkpoint dropdown")
    return adapter(sd_model, clip_skip)
