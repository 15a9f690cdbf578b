"""Registers the LoRA trainer with the WebUI: tab, settings, API routes, cleanup. No logic here."""
from modules import script_callbacks

import lora_trainer.webui.register as register   # unique package name: the Lora extension owns `networks`

script_callbacks.on_ui_tabs(register.ui_tabs)
script_callbacks.on_ui_settings(register.ui_settings)
script_callbacks.on_app_started(register.app_started)
script_callbacks.on_script_unloaded(register.script_unloaded)
