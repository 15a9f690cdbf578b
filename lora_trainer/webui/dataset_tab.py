"""The "Dataset" part of our tab: import, clean, caption, edit tags, organise.

Every button calls one Workspace operation (the same ones the API routes call) and shows its
report; the ones that use the WebUI's model run through wrap_gradio_gpu_call.
"""
from __future__ import annotations

import functools
import html
import threading

import gradio as gr

from ..errors import UserError

STOP = threading.Event()     # the tab's Stop button; long operations poll it between files
GALLERY_LIMIT = 200          # thumbnails shown at once (the filter narrows the rest down)
EDIT_ACTIONS = ["add", "remove", "replace", "dedupe", "sort", "consolidate"]


def _ws():
    from .generation import workspace
    return workspace()


def _error(e: UserError) -> str:
    return f"<div class='error lt-error'>{html.escape(e.text())}</div>"


def _ok(text: str, cls="lt-ok") -> str:
    return f"<div class='lt-result {cls}'>{text}</div>"


def _split(text) -> list[str]:
    return [t.strip() for t in str(text or "").replace("\n", ",").split(",") if t.strip()]


def _problems_html(items, limit=30) -> str:
    if not items:
        return ""
    rows = "".join(f"<li>{html.escape(str(p.get('path') or ''))}: {html.escape(str(p.get('message', '')))}"
                   f"{(' — ' + html.escape(p['fix'])) if p.get('fix') else ''}</li>" for p in items[:limit])
    more = f"<li>… and {len(items) - limit} more</li>" if len(items) > limit else ""
    return f"<ul class='lt-problems'>{rows}{more}</ul>"


def _projects():
    try:
        return [p["name"] for p in _ws().list()]
    except UserError:
        return []


def import_report_html(r: dict) -> str:
    return _ok(f"<p id='lt_ds_import_summary'>{html.escape(r['summary'])}</p>"
               + _problems_html(r["skipped"] + r["warnings"]))


def hygiene_html(r: dict) -> str:
    def groups(gs):
        return "".join(f"<li>keep <b>{html.escape(g['keep'])}</b>, drop {html.escape(', '.join(g['drop']))}"
                       f"{' (similar: review)' if g.get('level') == 'similar' else ''}</li>"
                       for g in gs) or "<li>none</li>"
    small = "".join(f"<li>{html.escape(s['path'])}: {s['size'][0]}×{s['size'][1]} → bucket "
                    f"{s['bucket'][0]}×{s['bucket'][1]} (upscaled ×{s['upscale']})</li>" for s in r["small"])
    buckets = ", ".join(f"{b['name']}: {b['count']}{' (short)' if b['short'] else ''}"
                        for b in (r.get("buckets") or {}).get("buckets", []))
    return _ok(f"<p id='lt_ds_hygiene_summary'>{html.escape(r['summary'])}</p>"
               f"<p>Exact duplicates:</p><ul>{groups(r['exact'])}</ul>"
               f"<p>Near duplicates:</p><ul>{groups(r['near'])}</ul>"
               + (f"<p>Smaller than their bucket:</p><ul>{small}</ul>" if small else "")
               + f"<p>Buckets: {html.escape(buckets)}</p>" + _problems_html(r["problems"]))


def caption_report_html(r: dict) -> str:
    note = f"<p class='lt-warning'>{html.escape(r['provider_note'])}</p>" if r.get("provider_note") else ""
    failed = [{"path": f["image"], "message": f["message"]} for f in r["failed"]]
    return _ok(f"<p id='lt_ds_caption_summary'>{len(r['written'])} caption(s) written, {len(r['unchanged'])} "
               f"unchanged, {len(r['skipped'])} skipped, {len(r['failed'])} failed on "
               f"{html.escape(str(r['provider']))} in {r['seconds']:.1f}s"
               f"{' (stopped)' if r['stopped'] else ''}.</p>" + note + _problems_html(failed))


def frequency_html(table: dict, limit=300) -> str:
    rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{n}</td></tr>"
                   for t, n in list(table["frequency"].items())[:limit])
    redundant = ", ".join(f"{r['generic']} ⊂ {r['specific']} ({r['images']})" for r in table["redundant"][:20])
    return (f"<div class='lt-tags'><p>{table['images']} image(s), {len(table['frequency'])} tag(s)</p>"
            f"<table id='lt_ds_tag_table'><tr><th>tag</th><th>images</th></tr>{rows}</table>"
            + (f"<p>Redundant: {html.escape(redundant)}</p>" if redundant else "") + "</div>")


def build_report_html(r: dict) -> str:
    folders = "".join(f"<li><code>{html.escape(f)}</code></li>" for f in r["folders"].values())
    reps = ", ".join(f"{k}: {v}" for k, v in r["repeats"].items())
    return _ok(f"<p id='lt_ds_build_summary'>Built <code>{html.escape(r['train_data_dir'])}</code> with "
               f"{r['images']} image(s); repeats {html.escape(reps)}.</p><ul>{folders}</ul>"
               + "".join(f"<p class='lt-warning'>{html.escape(w)}</p>" for w in r.get("warnings", [])))


def create_dataset_ui(train_data_dir, reg_data_dir):
    """Builds the Dataset tab's blocks; `train_data_dir` / `reg_data_dir` are the Train form's boxes to fill."""
    from modules.call_queue import wrap_gradio_gpu_call
    from ..prep.tagger_models import DEFAULT_MODEL, MODELS

    with gr.Row():
        project = gr.Dropdown(_projects(), label="Dataset project", elem_id="lt_ds_project", scale=2)
        refresh = gr.Button("↻", elem_id="lt_ds_refresh", scale=0, min_width=40)
        new_name = gr.Textbox(label="New project name", elem_id="lt_ds_new_name", scale=2)
        create = gr.Button("Create", elem_id="lt_ds_create", scale=0)
    status = gr.HTML(elem_id="lt_ds_status")

    with gr.Accordion("1. Import", open=True):
        with gr.Row():
            source = gr.Textbox(label="Import from folder (copied; the originals are never changed)",
                                elem_id="lt_ds_source", scale=3)
            recursive = gr.Checkbox(True, label="Sub-folders too", elem_id="lt_ds_recursive")
            frames = gr.Radio(["first", "all"], value="first", label="Animated files: frames", elem_id="lt_ds_frames")
        uploads = gr.File(file_count="multiple", label="…or upload images / captions / a zip", elem_id="lt_ds_upload")
        with gr.Row():
            import_btn = gr.Button("Import", variant="primary", elem_id="lt_ds_import")
            undo_btn = gr.Button("Undo last change", elem_id="lt_ds_undo")
            stop_btn = gr.Button("Stop", elem_id="lt_ds_stop")
        import_out = gr.HTML(elem_id="lt_ds_import_out")

    with gr.Accordion("2. Clean", open=False):
        with gr.Row():
            resolution = gr.Textbox("512", label="Training resolution", elem_id="lt_ds_resolution")
            threshold = gr.Number(10, precision=0, label="Near-duplicate distance (≤)", elem_id="lt_ds_threshold")
            check_btn = gr.Button("Check images", elem_id="lt_ds_check")
        with gr.Row():
            trash_names = gr.Textbox(label="Images to move to the trash (comma separated; Check images suggests "
                                     "the extra copies)", elem_id="lt_ds_trash_names")
            trash_btn = gr.Button("Move to trash", elem_id="lt_ds_trash")
        with gr.Row():
            upscaler = gr.Dropdown([], label="Upscaler (the WebUI's)", elem_id="lt_ds_upscaler")
            upscale_btn = gr.Button("Upscale the small images", elem_id="lt_ds_upscale")
        clean_out = gr.HTML(elem_id="lt_ds_clean_out")

    with gr.Accordion("3. Caption", open=False):
        with gr.Row():
            tagger_model = gr.Textbox(DEFAULT_MODEL, label="WD14 tagger: name, Hugging Face id or local folder",
                                      elem_id="lt_ds_tagger_model", scale=3)
            general_t = gr.Slider(0, 1, 0.35, step=0.01, label="General threshold", elem_id="lt_ds_general_threshold")
            character_t = gr.Slider(0, 1, 0.85, step=0.01, label="Character threshold", elem_id="lt_ds_character_threshold")
        gr.HTML(f"<p class='lt-hint'>Known taggers: {html.escape(', '.join(MODELS))}</p>")
        with gr.Row():
            mcut = gr.Checkbox(False, label="MCut", elem_id="lt_ds_mcut")
            rating = gr.Checkbox(False, label="Rating tag", elem_id="lt_ds_rating")
            undesired = gr.Textbox(label="Undesired tags", elem_id="lt_ds_undesired")
            mode = gr.Radio(["overwrite", "append", "missing"], value="overwrite", label="Write",
                            elem_id="lt_ds_write_mode")
            tag_btn = gr.Button("Tag images", variant="primary", elem_id="lt_ds_tag")
        with gr.Row():
            captioner = gr.Textbox("BLIP large", label="Sentence captioner (BLIP / GIT): name, id or folder",
                                   elem_id="lt_ds_captioner", scale=3)
            device = gr.Radio(["auto", "cuda", "cpu"], value="auto", label="Device", elem_id="lt_ds_device")
            sentence_ext = gr.Textbox(".txt", label="Caption file extension", elem_id="lt_ds_sentence_ext")
            prefix = gr.Textbox(label="Prefix (e.g. trigger words)", elem_id="lt_ds_prefix")
            sentence_btn = gr.Button("Caption with sentences", elem_id="lt_ds_sentences")
        caption_out = gr.HTML(elem_id="lt_ds_caption_out")

    with gr.Accordion("4. Tags", open=False):
        with gr.Row():
            filter_tags = gr.Textbox(label="Show images with tags", elem_id="lt_ds_filter_tags")
            filter_mode = gr.Radio(["all", "any", "none"], value="all", label="Match", elem_id="lt_ds_filter_mode")
            show_btn = gr.Button("Show", elem_id="lt_ds_show")
        with gr.Row():
            action = gr.Dropdown(EDIT_ACTIONS, value="add", label="Batch edit (on the images shown)",
                                 elem_id="lt_ds_action")
            edit_tags = gr.Textbox(label="Tags", elem_id="lt_ds_edit_tags")
            triggers = gr.Textbox(label="Trigger words (inserted first, in order)", elem_id="lt_ds_triggers")
            keep_sep = gr.Checkbox(False, label="Then ||| (kept first when shuffling; only kohya-style trainers "
                                   "strip it)", elem_id="lt_ds_keep_sep")
            synonyms = gr.Textbox(label="Replace / synonyms (old = new, one per line)", lines=2,
                                  elem_id="lt_ds_synonyms")
            apply_btn = gr.Button("Apply", variant="primary", elem_id="lt_ds_apply")
        shown = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Images", columns=6, height=420, elem_id="lt_ds_gallery",
                                     allow_preview=False)
            with gr.Column(scale=2):
                image_name = gr.Textbox(label="Image", interactive=False, elem_id="lt_ds_image_name")
                image_caption = gr.Textbox(label="Caption", lines=3, elem_id="lt_ds_image_caption")
                save_caption = gr.Button("Save caption", elem_id="lt_ds_save_caption")
                table = gr.HTML(elem_id="lt_ds_tags_out")

    with gr.Accordion("5. Organise", open=False):
        with gr.Row():
            concept = gr.Textbox(label="Concept name (the N_name folder, e.g. 'sks dog')", elem_id="lt_ds_concept")
            repeats = gr.Number(0, precision=0, label="Repeats (0: suggest)", elem_id="lt_ds_repeats")
            target = gr.Number(300, precision=0, label="Target images × repeats per epoch", elem_id="lt_ds_target")
            build_btn = gr.Button("Build training folder", variant="primary", elem_id="lt_ds_build")
            three_btn = gr.Button("Build three-caption folders (.txt tags, .caption sentences)",
                                  elem_id="lt_ds_three")
        with gr.Row():
            reg_count = gr.Number(10, precision=0, label="Regularization images", elem_id="lt_ds_reg_count")
            reg_class = gr.Textbox("person", label="Class name", elem_id="lt_ds_reg_class")
            reg_triggers = gr.Textbox(label="Trigger words to remove", elem_id="lt_ds_reg_triggers")
            reg_steps = gr.Number(20, precision=0, label="Steps", elem_id="lt_ds_reg_steps")
            reg_size = gr.Number(512, precision=0, label="Size", elem_id="lt_ds_reg_size")
            reg_btn = gr.Button("Generate with the loaded model", elem_id="lt_ds_reg")
        with gr.Row():
            built_dir = gr.Textbox(label="Training folder", interactive=False, elem_id="lt_ds_built_dir")
            built_reg_dir = gr.Textbox(label="Regularization folder", interactive=False, elem_id="lt_ds_built_reg_dir")
        use_btn = gr.Button("Use in the Train tab", elem_id="lt_ds_use")
        organise_out = gr.HTML(elem_id="lt_ds_organise_out")

    # ---------------------------------------------------------------- handlers

    def guarded(fn, n_out):
        """UserErrors become the red message in the handler's last output; other outputs unchanged.
        functools.wraps keeps fn's signature visible, so gradio still injects gr.Progress()."""
        @functools.wraps(fn)
        def run(*args, **kwargs):
            STOP.clear()
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                return (*[gr.update()] * (n_out - 1), _error(e)) if n_out > 1 else _error(e)
        return run

    def should_stop():
        from modules import shared
        return STOP.is_set() or shared.state.interrupted

    def reporter(progress):
        """Workspace progress(done, total, message) -> gradio's progress bar with ETA."""
        def report(done, total, message=""):
            progress((done, max(1, total)), desc=message, unit="images")
        return report

    def gallery_items(name, captions: dict):
        """Thumbnails of {image: caption} (the first GALLERY_LIMIT), captions as labels."""
        folder = _ws().open(name).images_dir
        return [(str(folder / i), (c or "")[:80]) for i, c in list(captions.items())[:GALLERY_LIMIT]]

    def on_create(name):
        info = _ws().create(name)
        return gr.update(choices=_projects(), value=info["name"]), _ok(f"Created {html.escape(info['root'])}")

    def on_refresh():
        from .generation import upscaler_names
        return gr.update(choices=_projects()), gr.update(choices=upscaler_names())

    def on_import(name, folder, rec, fr, files, progress=gr.Progress()):
        kwargs = {"recursive": rec, "frames": fr}
        if files:
            kwargs["files"] = [(f.name, getattr(f, "orig_name", None) or f.name) for f in files]
        else:
            kwargs["source"] = folder
        return import_report_html(_ws().import_images(name, progress=reporter(progress), should_stop=should_stop,
                                                      **kwargs))

    def on_undo(name):
        r = _ws().undo(name)
        return _ok(html.escape(r["message"]) + _problems_html(r["problems"]))

    def on_check(name, reso, dist, progress=gr.Progress()):
        report = _ws().hygiene(name, resolution=reso, threshold=int(dist or 10), progress=reporter(progress),
                               should_stop=should_stop)
        # suggested drops: every extra exact copy, and near copies that are the same picture
        drops = [d for g in report["exact"] for d in g["drop"]]
        drops += [d for g in report["near"] if g.get("level") == "same" for d in g["drop"] if d not in drops]
        return ", ".join(drops), hygiene_html(report)

    def on_trash(name, names):
        r = _ws().trash(name, _split(names))
        return _ok(html.escape(r["message"]) + _problems_html(r["problems"]))

    def on_upscale(name, reso, which, progress=gr.Progress()):
        from .generation import upscale_image
        if not which:
            raise UserError("No upscaler chosen.", fix="Press ↻ to list the WebUI's upscalers, then pick one.")
        r = _ws().upscale(name, upscale_image, upscaler=which, resolution=reso, progress=reporter(progress),
                          should_stop=should_stop)
        rows = "".join(f"<li>{html.escape(u['image'])}: {u['from'][0]}×{u['from'][1]} → {u['to'][0]}×{u['to'][1]}</li>"
                       for u in r["upscaled"])
        return _ok(f"<p>{len(r['upscaled'])} image(s) upscaled with {html.escape(which)}.</p><ul>{rows}</ul>"
                   + _problems_html(r["problems"]))

    def on_tag(name, model, g, c, use_mcut, use_rating, unwanted, write_mode, progress=gr.Progress()):
        r = _ws().tag(name, model=model, mode=write_mode, general_threshold=g, character_threshold=c,
                      use_mcut=use_mcut, include_rating=use_rating, undesired_tags=_split(unwanted),
                      progress=reporter(progress), should_stop=should_stop)
        return caption_report_html(r)

    def on_sentences(name, model, dev, ext, pre, write_mode, progress=gr.Progress()):
        r = _ws().caption_sentences(name, model=model, device=dev, caption_extension=ext or ".txt",
                                    prefix=pre or "", mode=write_mode, progress=reporter(progress),
                                    should_stop=should_stop)
        return caption_report_html(r)

    def on_show(name, tags, how):
        images = _ws().filter(name, _split(tags), how)
        table = _ws().tag_table(name, images)
        return images, gallery_items(name, table["captions"]), frequency_html(table)

    def on_apply(name, images, act, tags, trig, syn, separator):
        args = {}
        if act == "add":
            args = {"tags": _split(tags), "triggers": _split(trig), "add_separator": bool(separator and _split(trig))}
        elif act == "remove":
            args = {"tags": _split(tags)}
        elif act == "replace":
            args = {"synonyms": syn}
        elif act == "sort":
            args = {"triggers": _split(trig)}
        elif act == "consolidate":
            args = {"synonyms": syn} if str(syn or "").strip() else {}
        r = _ws().edit_tags(name, act, images=images, **args)
        table = _ws().tag_table(name, images)
        return (gallery_items(name, table["captions"]), frequency_html(table),
                _ok(f"<p id='lt_ds_edit_summary'>{act}: {len(r['changed'])} caption(s) changed.</p>"))

    def on_select(name, images, evt: gr.SelectData):
        captions = _ws().captions(name)
        image = (images if images is not None else list(captions))[evt.index]
        return image, captions.get(image) or ""

    def on_save_caption(name, image, text):
        r = _ws().set_caption(name, image, text)
        return _ok(f"Saved the caption of {html.escape(r['image'])}.")

    def on_build(name, concept_name, reps, tgt):
        concepts = [{"name": concept_name or name, "repeats": int(reps) if reps else None}]
        r = _ws().organise(name, concepts=concepts, target_per_epoch=int(tgt or 300))
        return r["train_data_dir"], build_report_html(r)

    def on_three(name, reps):
        r = _ws().three_captions(name, repeats=int(reps) if reps else 1)
        return r["train_data_dir"], build_report_html(r)

    def on_reg(name, count, cls, trig, steps, size, progress=gr.Progress()):
        from .generation import txt2img
        r = _ws().reg_images(name, txt2img, count=int(count), class_name=cls or "person",
                             triggers=_split(trig), steps=int(steps), width=int(size), height=int(size),
                             progress=reporter(progress), should_stop=should_stop)
        return r["reg_data_dir"], _ok(f"<p>{len(r['images'])} regularization image(s) in "
                                      f"<code>{html.escape(r['folder'])}</code>; reg_data_dir: "
                                      f"<code>{html.escape(r['reg_data_dir'])}</code>.</p>")

    def bind(button, fn, inputs, outputs, gpu=False):
        handler = guarded(fn, len(outputs))
        if gpu:
            handler = wrap_gradio_gpu_call(handler, extra_outputs=[gr.update()] * (len(outputs) - 1))
        button.click(fn=handler, inputs=inputs, outputs=outputs)

    bind(create, on_create, [new_name], [project, status])
    refresh.click(fn=on_refresh, inputs=[], outputs=[project, upscaler])
    stop_btn.click(fn=lambda: STOP.set(), inputs=[], outputs=[])
    bind(import_btn, on_import, [project, source, recursive, frames, uploads], [import_out])
    bind(undo_btn, on_undo, [project], [import_out])
    bind(check_btn, on_check, [project, resolution, threshold], [trash_names, clean_out])
    bind(trash_btn, on_trash, [project, trash_names], [clean_out])
    bind(upscale_btn, on_upscale, [project, resolution, upscaler], [clean_out], gpu=True)
    bind(tag_btn, on_tag, [project, tagger_model, general_t, character_t, mcut, rating, undesired, mode], [caption_out])
    bind(sentence_btn, on_sentences, [project, captioner, device, sentence_ext, prefix, mode], [caption_out], gpu=True)
    bind(show_btn, on_show, [project, filter_tags, filter_mode], [shown, gallery, table])
    bind(apply_btn, on_apply, [project, shown, action, edit_tags, triggers, synonyms, keep_sep],
         [gallery, table, status])
    gallery.select(fn=on_select, inputs=[project, shown], outputs=[image_name, image_caption])
    bind(save_caption, on_save_caption, [project, image_name, image_caption], [status])
    bind(build_btn, on_build, [project, concept, repeats, target], [built_dir, organise_out])
    bind(three_btn, on_three, [project, repeats], [built_dir, organise_out])
    bind(reg_btn, on_reg, [project, reg_count, reg_class, reg_triggers, reg_steps, reg_size],
         [built_reg_dir, organise_out], gpu=True)
    use_btn.click(fn=lambda d, r: (d, r), inputs=[built_dir, built_reg_dir], outputs=[train_data_dir, reg_data_dir],
                  _js="lora_trainer_show_train")
    def on_project(name):
        try:
            return None, gallery_items(name, _ws().captions(name)) if name else []
        except UserError:
            return None, []
    project.change(fn=on_project, inputs=[project], outputs=[shown, gallery])
