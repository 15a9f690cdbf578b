"""Callback bodies for scripts/lora_trainer.py (kept cheap: heavy imports happen on first use)."""
from __future__ import annotations


def ui_tabs():
    from .tab import create_tab
    return create_tab()


def ui_settings():
    from modules import shared
    options = {
        "lora_trainer_unload_vae": shared.OptionInfo(
            False, "Move the VAE to the CPU while training (after caching latents)"),
        "lora_trainer_datasets_dir": shared.OptionInfo(
            "", "Dataset projects folder (empty: <data dir>/lora-trainer/datasets)"),
    }
    for key, info in shared.options_section(("lora_trainer", "LoRA Trainer", "training"), options).items():
        shared.opts.add_option(key, info)


def app_started(demo, app):
    from modules import shared
    if not (getattr(shared.cmd_opts, "api", False) or getattr(shared.cmd_opts, "nowebui", False)):
        return                       # like A1111: REST only with --api / --nowebui
    from .api import ROUTES as TRAINING_ROUTES
    from .dataset_api import ROUTES as DATASET_ROUTES
    from .http import mount
    mount(app, TRAINING_ROUTES + DATASET_ROUTES)


def script_unloaded():
    import sys
    jobs = sys.modules.get("lora_trainer.webui.jobs")
    if jobs is not None:
        jobs.JOBS.shutdown()
    prep_jobs = sys.modules.get("lora_trainer.webui.prep_jobs")
    if prep_jobs is not None:
        prep_jobs.PREP_JOBS.shutdown()
