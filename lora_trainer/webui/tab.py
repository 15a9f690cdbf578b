"""The "LoRA Trainer" tab: the only place gradio is imported."""
from __future__ import annotations

import html

import gradio as gr

from ..config import MIXED_PRECISIONS, OPTIMIZERS, SAVE_PRECISIONS, SCHEDULERS, TrainConfig
from ..errors import UserError

D = TrainConfig()

# (config key, component factory): the form, in the order of its inputs
def _form():
    f = {}
    with gr.Row():
        f["train_data_dir"] = gr.Textbox(label="Training folder (train_data_dir: holds N_name folders)",
                                         placeholder="/path/to/dataset", elem_id="lt_train_data_dir", scale=3)
        f["output_name"] = gr.Textbox(label="Output name (output_name)", placeholder="my_lora", elem_id="lt_output_name")
        f["trigger_words"] = gr.Textbox(label="Trigger words", placeholder="sks style", elem_id="lt_trigger_words")
    with gr.Row():
        f["network_type"] = gr.Radio(["lora", "locon"], value=D.network_type, label="Network (network_type)", elem_id="lt_network_type")
        f["network_dim"] = gr.Number(value=D.network_dim, precision=0, label="network_dim", elem_id="lt_network_dim")
        f["network_alpha"] = gr.Number(value=D.network_alpha, label="network_alpha", elem_id="lt_network_alpha")
        f["conv_dim"] = gr.Number(value=D.conv_dim, precision=0, label="conv_dim (LoCon)", elem_id="lt_conv_dim")
        f["conv_alpha"] = gr.Number(value=D.conv_alpha, label="conv_alpha (LoCon)", elem_id="lt_conv_alpha")
    with gr.Row():
        f["optimizer_type"] = gr.Dropdown(list(OPTIMIZERS), value=D.optimizer_type, label="optimizer_type", elem_id="lt_optimizer_type")
        f["learning_rate"] = gr.Number(value=D.learning_rate, label="learning_rate (Prodigy: 1.0)", elem_id="lt_learning_rate")
        f["lr_scheduler"] = gr.Dropdown(list(SCHEDULERS), value=D.lr_scheduler, label="lr_scheduler", elem_id="lt_lr_scheduler")
        f["lr_warmup_steps"] = gr.Number(value=D.lr_warmup_steps, label="lr_warmup_steps (or ratio < 1)", elem_id="lt_lr_warmup_steps")
    with gr.Row():
        f["max_train_epochs"] = gr.Number(value=D.max_train_epochs, precision=0, label="max_train_epochs", elem_id="lt_max_train_epochs")
        f["train_batch_size"] = gr.Number(value=D.train_batch_size, precision=0, label="train_batch_size", elem_id="lt_train_batch_size")
        f["resolution"] = gr.Textbox(value=D.resolution, label='resolution ("512" or "512,768")', elem_id="lt_resolution")
        f["seed"] = gr.Number(value=D.seed, precision=0, label="seed", elem_id="lt_seed")
        f["save_every_n_epochs"] = gr.Number(value=D.save_every_n_epochs, precision=0, label="save_every_n_epochs (0: end only)", elem_id="lt_save_every_n_epochs")
    with gr.Row():
        f["enable_bucket"] = gr.Checkbox(value=D.enable_bucket, label="enable_bucket", elem_id="lt_enable_bucket")
        f["min_bucket_reso"] = gr.Number(value=D.min_bucket_reso, precision=0, label="min_bucket_reso", elem_id="lt_min_bucket_reso")
        f["max_bucket_reso"] = gr.Number(value=D.max_bucket_reso, precision=0, label="max_bucket_reso", elem_id="lt_max_bucket_reso")
        f["bucket_reso_steps"] = gr.Number(value=D.bucket_reso_steps, precision=0, label="bucket_reso_steps", elem_id="lt_bucket_reso_steps")
        f["bucket_no_upscale"] = gr.Checkbox(value=D.bucket_no_upscale, label="bucket_no_upscale", elem_id="lt_bucket_no_upscale")
        f["flip_aug"] = gr.Checkbox(value=D.flip_aug, label="flip_aug", elem_id="lt_flip_aug")
    with gr.Row():
        f["train_text_encoder"] = gr.Checkbox(value=D.train_text_encoder, label="Train the text encoder", elem_id="lt_train_text_encoder")
        f["text_encoder_lr"] = gr.Textbox(value="", label="text_encoder_lr (empty: learning_rate)", elem_id="lt_text_encoder_lr")
        f["unet_lr"] = gr.Textbox(value="", label="unet_lr (empty: learning_rate)", elem_id="lt_unet_lr")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            f["caption_extension"] = gr.Textbox(value=D.caption_extension, label="caption_extension", elem_id="lt_caption_extension")
            f["shuffle_caption"] = gr.Checkbox(value=D.shuffle_caption, label="shuffle_caption", elem_id="lt_shuffle_caption")
            f["keep_tokens"] = gr.Number(value=D.keep_tokens, precision=0, label="keep_tokens", elem_id="lt_keep_tokens")
            f["optimizer_args"] = gr.Textbox(value="", label="optimizer_args (e.g. weight_decay=0.01 d_coef=2)", elem_id="lt_optimizer_args")
        with gr.Row():
            f["reg_data_dir"] = gr.Textbox(value="", label="reg_data_dir (regularization images, N_class folders)", elem_id="lt_reg_data_dir", scale=3)
            f["prior_loss_weight"] = gr.Number(value=D.prior_loss_weight, label="prior_loss_weight", elem_id="lt_prior_loss_weight")
        with gr.Row():
            f["min_snr_gamma"] = gr.Textbox(value="", label="min_snr_gamma (e.g. 5)", elem_id="lt_min_snr_gamma")
            f["noise_offset"] = gr.Textbox(value="", label="noise_offset (e.g. 0.05)", elem_id="lt_noise_offset")
            f["clip_skip"] = gr.Textbox(value="", label="clip_skip (empty: the WebUI's setting)", elem_id="lt_clip_skip")
            f["save_precision"] = gr.Dropdown(list(SAVE_PRECISIONS), value=D.save_precision, label="save_precision", elem_id="lt_save_precision")
            f["gradient_checkpointing"] = gr.Checkbox(value=D.gradient_checkpointing, label="gradient_checkpointing", elem_id="lt_gradient_checkpointing")
        with gr.Row():
            f["mixed_precision"] = gr.Dropdown(list(MIXED_PRECISIONS), value=D.mixed_precision, elem_id="lt_mixed_precision",
                                               label="mixed_precision (auto: the WebUI's own; the scan shows what runs)")
            f["full_bf16"] = gr.Checkbox(value=D.full_bf16, label="full_bf16 (network in bf16 too)", elem_id="lt_full_bf16")
            f["overwrite"] = gr.Checkbox(value=D.overwrite, label="Overwrite existing files", elem_id="lt_overwrite")
    return f


def form_to_config(keys, values) -> TrainConfig:
    data = {}
    for key, value in zip(keys, values):
        if key == "train_text_encoder":
            data["network_train_unet_only"] = not value
            continue
        if isinstance(value, str) and value.strip() == "" and key in ("text_encoder_lr", "unet_lr", "min_snr_gamma",
                                                                       "noise_offset", "clip_skip"):
            continue
        if isinstance(value, float) and key in ("network_dim", "conv_dim", "max_train_epochs", "train_batch_size",
                                                "seed", "save_every_n_epochs", "min_bucket_reso", "max_bucket_reso",
                                                "bucket_reso_steps", "keep_tokens"):
            value = int(value)
        data[key] = value
    return TrainConfig.from_dict(data)


def _error_html(e: UserError) -> str:
    return f"<div class='error lt-error'>{html.escape(e.text())}</div>"


def scan_summary_html(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(s['folder'])}</td><td>{s['repeats']}</td><td>{s['images']}</td>"
        f"<td>{s['captions_found']}</td><td>{s['captions_missing']}</td></tr>" for s in summary.get("folders", []))
    buckets = ", ".join(f"{b['resolution'][0]}×{b['resolution'][1]}: {b['count']}" for b in summary.get("buckets", []))
    problems = "".join(f"<li class='lt-{p['severity']}'>{html.escape(str(p['path']))}: {html.escape(p['message'])}"
                       f"{(' — ' + html.escape(p['fix'])) if p.get('fix') else ''}</li>" for p in summary.get("problems", []))
    return (f"<div class='lt-scan'><table><tr><th>folder</th><th>repeats</th><th>images</th><th>captions</th>"
            f"<th>missing</th></tr>{rows}</table>"
            f"<p>Images × repeats: <b>{summary.get('num_train_images', 0)}</b> · buckets: {html.escape(buckets)}</p>"
            + (f"<p>Regularization: <b>{summary['reg_samples_per_epoch']}</b> samples per epoch from "
               f"{html.escape(', '.join(f['folder'] for f in summary.get('reg_folders', [])))}</p>"
               if summary.get("reg_samples_per_epoch") else "")
            + precision_html(summary.get("precision"))
            + f"<p id='lt_step_count'>Steps per epoch: <b>{summary.get('steps_per_epoch', 0)}</b> · "
            f"total: <b>{summary.get('total_steps', 0)}</b></p>"
            + (f"<ul class='lt-problems'>{problems}</ul>" if problems else "<p>No problems found.</p>") + "</div>")


def precision_html(report: dict | None) -> str:
    if not report:
        return ""
    webui = (f"the WebUI holds the UNet in {report['unet_dtype']} (VAE {report['vae_dtype']}, text encoder "
             f"{report['text_encoder_dtype']}{', fp8 storage' if report['fp8_storage'] else ''}"
             f"{', --no-half' if report['no_half'] else ''}{', --upcast-sampling' if report['upcast_sampling'] else ''})")
    if report.get("error"):
        return f"<p class='lt-error' id='lt_precision'>Precision: {html.escape(report['error']['text'])} ({webui})</p>"
    scaling = ", loss scaling" if report.get("loss_scaling") else ""
    return (f"<p id='lt_precision'>Precision: <b>{report['mixed_precision']}</b> — computes in {report['compute_dtype']}, "
            f"master weights {report['master_weights']}{scaling}; {webui}.</p>")


def prompt_text(name: str, weight: float, trigger_words: str) -> str:
    text = f"<lora:{name}:{round(float(weight), 2)}>"
    return f"{trigger_words.strip()}, {text}" if trigger_words.strip() else text


def _train_ui(wrap_gradio_gpu_call, infotext_utils, JOBS):
    """The Train tab's form, buttons and results; returns the train_data_dir box."""
    task_id = gr.Textbox(visible=False, elem_id="lt_task_id")
    with gr.Row():
        with gr.Column(scale=3):
            fields = _form()
        with gr.Column(scale=2):
            with gr.Row():
                scan_btn = gr.Button("Scan dataset", elem_id="lt_scan")
                start_btn = gr.Button("Start", variant="primary", elem_id="lt_start")
                stop_btn = gr.Button("Stop & Save", elem_id="lt_stop")
            scan_out = gr.HTML(elem_id="lt_scan_summary")
            step_count = gr.HTML(elem_id="lt_live_steps")
            last_buckets = gr.State(None)
            gr.HTML("<div id='lt_loss_plot' class='lt-loss-plot'><svg viewBox='0 0 400 120'></svg>"
                    "<div class='lt-loss-label'></div></div>", elem_id="lt_loss_box")
            progress_out = gr.HTML(elem_id="lt_progress")
            with gr.Row():
                weight = gr.Slider(0, 2, value=0.8, step=0.05, label="LoRA weight for txt2img", elem_id="lt_weight")
            prompt = gr.Textbox(label="Prompt to use", elem_id="lt_prompt", interactive=True)
            send_btn = gr.Button("Send to txt2img", elem_id="lt_send_txt2img")
            result_out = gr.HTML(elem_id="lt_result")
    keys = list(fields)
    inputs = [fields[k] for k in keys]

    def do_scan(*values):
        from .models.common import scan_summary
        try:
            summary = scan_summary(form_to_config(keys, values))
        except UserError as e:
            return _error_html(e), None
        return scan_summary_html(summary), summary["buckets"]

    def do_train(task, *values):
        *values, w = values
        try:
            cfg = form_to_config(keys, values)
        except UserError as e:
            return gr.update(), _error_html(e)
        job = JOBS.run_here(cfg, task)
        state_class = {"finished": "lt-ok", "stopped": "lt-warning"}.get(job.state, "lt-error")
        files = "".join(f"<li><code>{html.escape(f)}</code></li>" for f in job.files)
        text = (f"<div class='lt-result {state_class}' data-state='{job.state}'><p>Training <b>{job.state}</b> "
                f"after {job.step}/{job.total_steps} steps.</p>"
                + (f"<p class='error'>{html.escape(job.error)}</p>" if job.error else "")
                + (f"<p>Files in models/Lora:</p><ul>{files}</ul>" if files else "") + "</div>")
        name = job.files[-1].rsplit(".", 1)[0] if job.files else cfg.output_name
        return prompt_text(name, w, cfg.trigger_words) if job.files else gr.update(), text

    scan_btn.click(fn=do_scan, inputs=inputs, outputs=[scan_out, last_buckets])

    def recount(buckets, epochs, batch_size):
        """The live step count: re-counted from the last scan's buckets, no rescan needed."""
        from ..dataset.scan import count_steps
        if not buckets:
            return gr.update()
        per_bucket = {tuple(b["resolution"]): b["count"] for b in buckets}
        _, per_epoch, _, total = count_steps(per_bucket, max(1, int(batch_size or 1)), 1, max(1, int(epochs or 1)))
        return (f"<p id='lt_step_count'>Steps per epoch: <b>{per_epoch}</b> · total: <b>{total}</b> "
                f"(batch {int(batch_size or 1)}, {int(epochs or 1)} epochs)</p>")
    for source in (fields["max_train_epochs"], fields["train_batch_size"]):
        source.change(fn=recount, inputs=[last_buckets, fields["max_train_epochs"], fields["train_batch_size"]],
                      outputs=[step_count])
    start_btn.click(fn=wrap_gradio_gpu_call(do_train, extra_outputs=[gr.update()]), _js="lora_trainer_start",
                    inputs=[task_id, *inputs, weight], outputs=[prompt, result_out])
    stop_btn.click(fn=lambda: JOBS.stop_current("save") and None, inputs=[], outputs=[])

    def reweight(w, text):
        import re
        return re.sub(r"<lora:([^:>]+):[0-9.]+>", lambda m: f"<lora:{m.group(1)}:{round(float(w), 2)}>", text or "")
    weight.change(fn=reweight, inputs=[weight, prompt], outputs=[prompt])
    infotext_utils.register_paste_params_button(infotext_utils.ParamBinding(
        paste_button=send_btn, tabname="txt2img", source_text_component=prompt))
    return fields["train_data_dir"], fields["reg_data_dir"]


def create_tab():
    from modules import infotext_utils
    from modules.call_queue import wrap_gradio_gpu_call
    from .jobs import JOBS
    from .dataset_tab import create_dataset_ui

    with gr.Blocks(analytics_enabled=False) as ui:
        with gr.Tabs(elem_id="lt_subtabs"):
            with gr.Tab("Train", elem_id="lt_train_tab"):
                train_data_dir, reg_data_dir = _train_ui(wrap_gradio_gpu_call, infotext_utils, JOBS)
            with gr.Tab("Dataset", elem_id="lt_dataset_tab"):
                create_dataset_ui(train_data_dir, reg_data_dir)
    return [(ui, "LoRA Trainer", "lora_trainer")]
