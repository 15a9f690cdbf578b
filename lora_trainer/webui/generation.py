"""What dataset preparation borrows from the WebUI: folders, txt2img and the upscalers.

The callers (prep_jobs) hold queue_lock while these run.
"""
from __future__ import annotations

import os

DATASETS_OPTION = "lora_trainer_datasets_dir"


def default_datasets_dir() -> str:
    from modules import paths
    return os.path.join(paths.data_path, "lora-trainer", "datasets")


def workspace():
    """The Workspace of this WebUI: projects under the setting (default <data dir>/lora-trainer/datasets),
    tagger and captioner models under models/lora-trainer/."""
    from modules import paths, shared
    from ..prep.workspace import Workspace
    root = getattr(shared.opts, DATASETS_OPTION, "") or default_datasets_dir()
    return Workspace(root, os.path.join(paths.models_path, "lora-trainer"))


def upscaler_names() -> list[str]:
    from modules import shared
    return [u.name for u in shared.sd_upscalers if u.name != "None"]


def upscale_image(image, scale: float, name: str):
    """The image upscaled by `scale` with the WebUI upscaler called `name` (as in Extras)."""
    from modules import shared
    from ..errors import UserError
    for upscaler in shared.sd_upscalers:
        if upscaler.name == name:
            return upscaler.scaler.upscale(image, scale, upscaler.data_path)
    raise UserError(f"There is no upscaler named {name!r}.", key="upscaler",
                    fix="Use one of: " + ", ".join(upscaler_names()))


def txt2img(prompt: str, negative_prompt: str, seed: int, width: int, height: int, steps: int):
    """One image from the loaded checkpoint, as the txt2img tab would make it (nothing saved)."""
    from contextlib import closing
    from modules import processing, shared
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model, prompt=prompt, negative_prompt=negative_prompt, seed=seed,
        width=width, height=height, steps=steps, cfg_scale=7.0, sampler_name="Euler a", n_iter=1,
        batch_size=1, do_not_save_samples=True, do_not_save_grid=True)
    job_count, job_no = shared.state.job_count, shared.state.job_no
    with closing(p):
        processed = processing.process_images(p)
    # process_images counts its own batches; the job's count is ours
    shared.state.job_count, shared.state.job_no = job_count, job_no
    return processed.images[0]
