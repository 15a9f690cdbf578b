"""The dataset-preparation operations, by project name, with plain-data arguments and results.

This is the one surface the API routes and the tab call: every function takes JSON-like
arguments (names, numbers, lists) and returns a JSON-ready dict, so both front ends behave
the same. It knows nothing of the WebUI: the two operations that need its model
(upscaling, regularization images) take the WebUI's functions as arguments (see
lora_trainer.webui.generation). Every change to a project goes through an Operation, so
"Undo" reverses the last one, captions included.

Long operations accept `progress(done, total, message)` and `should_stop()`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import asdict, fields
from pathlib import Path

from ..dataset.captions import caption_path, read_caption
from ..dataset.images import image_size, open_image
from ..errors import UserError
from . import tags as tag_ops
from .problems import FileProblem
from .project import Project, create_project, list_projects, open_project

TRAINING_DIR = "training"      # <project>/training: the organised train_data_dir
REG_DIR = "reg"                # <project>/reg: the reg_data_dir of generated class images
TAGGERS_DIR = "taggers"        # under the models folder given to the Workspace
CAPTIONERS_DIR = "captioners"
TAG_EDITS = ("add", "remove", "replace", "dedupe", "sort", "consolidate")


def _noop_progress(done, total, message=""):
    return None


class Workspace:
    """Projects under `projects_root`; tagger / captioner models under `models_dir`."""

    def __init__(self, projects_root, models_dir):
        self.projects_root = Path(os.path.abspath(os.path.expanduser(str(projects_root))))
        self.models_dir = Path(os.path.abspath(os.path.expanduser(str(models_dir))))

    # ------------------------------------------------------------ projects

    def list(self) -> list[dict]:
        out = []
        for name in list_projects(self.projects_root):
            with contextlib.suppress(UserError, OSError):
                project = open_project(self.projects_root, name)
                out.append({"name": name, "images": len(project.image_names())})
        return out

    def create(self, name) -> dict:
        return self.describe(create_project(self.projects_root, name).name)

    def open(self, name) -> Project:
        return open_project(self.projects_root, name)

    def describe(self, name, caption_extension: str = ".txt") -> dict:
        """The project, its images with caption and size, the undo list, its built folders."""
        project = self.open(name)
        images = []
        for path in project.image_paths():
            text = _read_exact(path, caption_extension)
            try:
                size = list(image_size(path))
            except UserError:
                size = None
            images.append({"name": path.name, "caption": text, "size": size})
        training = project.root / TRAINING_DIR
        reg = project.root / REG_DIR
        return {"name": project.name, "root": str(project.root), "images_dir": str(project.images_dir),
                "count": len(images), "captioned": sum(1 for i in images if i["caption"] is not None),
                "images": images, "history": project.history(),
                "train_data_dir": str(training) if training.is_dir() else None,
                "reg_data_dir": str(reg) if reg.is_dir() else None,
                "warnings": [w.as_dict() for w in project.warnings]}

    # ------------------------------------------------------------ import, trash, undo

    def import_images(self, name, *, source=None, files=None, zip=None, recursive=True,
                      frames="first", progress=None, should_stop=None) -> dict:
        """From a folder (`source`), from files (paths, optionally (path, shown name) pairs), or a zip."""
        project = self.open(name)
        given = [x for x in (source, files, zip) if x]
        if len(given) != 1:
            raise UserError("Give exactly one of: a folder to import from, files, or a zip.",
                            key="source", fix="Paste the folder that holds your images (or upload files).")
        cb = _file_progress(progress)
        if source:
            report = project.import_folder(source, recursive, cb, should_stop, frames=frames)
        elif zip:
            report = project.import_zip(zip, cb, should_stop, frames=frames)
        else:
            pairs = [(f, None) if isinstance(f, (str, os.PathLike)) else tuple(f) for f in files]
            paths = [p for p, _ in pairs]
            shown = [s or Path(p).name for p, s in pairs]
            report = project.import_files(paths, shown, cb, should_stop, frames=frames)
        return report.as_dict()

    def trash(self, name, images) -> dict:
        return self.open(name).trash(list(images or [])).as_dict()

    def undo(self, name) -> dict:
        return self.open(name).undo_last().as_dict()

    def empty_trash(self, name) -> dict:
        return {"freed_bytes": self.open(name).empty_trash()}

    # ------------------------------------------------------------ hygiene

    def hygiene(self, name, *, threshold=None, mirrored=False, progress=None, should_stop=None,
                **bucket_settings) -> dict:
        """Unreadable files, exact / near duplicate groups, small images and the bucket report."""
        from .hygiene import NEAR_DUPLICATE_THRESHOLD, check_images
        project = self.open(name)
        paths = project.image_paths()
        cb = (lambda done, total, *_: progress(done, total, "checking images")) if progress else None
        report = check_images(paths, bucket_settings, progress=cb, should_stop=should_stop, mirrored=bool(mirrored),
                              threshold=int(NEAR_DUPLICATE_THRESHOLD if threshold is None else threshold))
        return _relative_paths(report.as_dict(), project.images_dir)

    # ------------------------------------------------------------ captions

    def captions(self, name, caption_extension: str = ".txt") -> dict[str, str | None]:
        project = self.open(name)
        # exactly <stem><ext>: the trainer's fallback to the other extension would let an edit of the
        # .txt tags copy a .caption sentence into it
        return {p.name: _read_exact(p, caption_extension) for p in project.image_paths()}

    def set_caption(self, name, image, text, caption_extension: str = ".txt") -> dict:
        project = self.open(name)
        path = project._member(image)
        target = caption_path(path, caption_extension)
        with project.operation("caption", f"Edit the caption of {path.name}") as op:
            _record_caption_change(op, target)
            _write_caption(target, str(text or ""))
        return {"image": path.name, "caption": read_caption(path, caption_extension)[0],
                "operation": op.id}

    def tag(self, name, *, model="wd-swinv2-tagger-v3", mode="overwrite", images=None, providers=None,
            batch_size=8, caption_extension=".txt", revision=None, repo_id=None, append_tags=False,
            progress=None, should_stop=None, **tag_options) -> dict:
        """WD14 / WD v3 tags into each image's caption file (undo: one operation).

        Options: TagOptions' fields, or kohya's tagger arguments (thresh, general_threshold,
        character_threshold, undesired_tags, remove_underscore, character_tags_first,
        use_rating_tags[_as_last_tag], repo_id, append_tags)."""
        model = repo_id or model
        mode = "append" if append_tags else mode
        from .captioning import caption_images
        from .tagger import TagOptions, WD14Tagger
        from .tagger_models import resolve_model
        options = _tag_options(TagOptions, tag_options)
        project = self.open(name)
        paths = self._selection(project, images)
        if progress:
            progress(0, len(paths), "loading the tagger")
        model_dir = resolve_model(model, self.models_dir / TAGGERS_DIR, revision=revision)
        tagger = WD14Tagger(model_dir, providers=providers, options=options)
        cb = (lambda done, total, *_: progress(done, total, "tagging")) if progress else None
        with self._caption_operation(project, "tag", f"Tag with {Path(model_dir).name}",
                                     paths, mode, caption_extension) as op:
            report = caption_images(paths, tagger, mode, progress=cb, should_stop=should_stop,
                                    batch_size=batch_size, options=options, extension=caption_extension,
                                    backup=False)
        out = _caption_report(report)
        out.update(model=str(model_dir), operation=op.id if op.entries else None)
        out["tags"] = {Path(k).name: list(v.tags) for k, v in report.results.items()}
        return out

    def caption_sentences(self, name, *, model="BLIP large", mode="overwrite", images=None, device="auto",
                          batch_size=4, caption_extension=".txt", prefix="", max_length=None, num_beams=None,
                          min_length=None, progress=None, should_stop=None) -> dict:
        """Natural-language captions (BLIP / GIT); the model is unloaded afterwards."""
        from .captioning import caption_images_with_sentences
        from .sentences import SentenceCaptioner, resolve_captioner
        project = self.open(name)
        paths = self._selection(project, images)
        if progress:
            progress(0, len(paths), "loading the captioner")
        model_dir = resolve_captioner(model, self.models_dir / CAPTIONERS_DIR)
        # kohya's make_captions.py names: max_length, min_length, num_beams
        kwargs = {k: int(v) for k, v in (("max_length", max_length), ("num_beams", num_beams),
                                         ("min_length", min_length)) if v is not None}
        cb = (lambda done, total, *_: progress(done, total, "captioning")) if progress else None
        with SentenceCaptioner(model_dir, device=device, **kwargs) as captioner, \
                self._caption_operation(project, "caption", f"Captions from {Path(model_dir).name}",
                                        paths, mode, caption_extension) as op:
            report = caption_images_with_sentences(paths, captioner, mode, progress=cb, should_stop=should_stop,
                                                   batch_size=batch_size, extension=caption_extension,
                                                   backup=False, prefix=prefix)
        out = _caption_report(report)
        out.update(model=str(model_dir), operation=op.id if op.entries else None)
        out["captions"] = {Path(k).name: str(getattr(v, "text", v)) for k, v in report.results.items()}
        return out

    def _out_dir(self, project: Project, out_dir) -> Path:
        """<project>/training, or a folder the caller names inside the projects root (an API
        client must not be able to write copies anywhere on the disk)."""
        if not out_dir:
            return project.root / TRAINING_DIR
        out = Path(os.path.abspath(os.path.expanduser(str(out_dir))))
        root = Path(os.path.realpath(self.projects_root))
        if not Path(os.path.realpath(out)).is_relative_to(root) or Path(os.path.realpath(out)) == root:
            raise UserError("The output folder must be inside the dataset projects folder.", path=out, key="out_dir",
                            fix=f"Leave it empty (<project>/{TRAINING_DIR}) or choose a folder under {root}.")
        return out

    @staticmethod
    def _selection(project: Project, images) -> list[Path]:
        if images is None:
            return project.image_paths()
        return [project._member(i) for i in images]

    @contextlib.contextmanager
    def _caption_operation(self, project, kind, description, paths, mode, extension):
        """Record, before anything is written, how to undo every caption the run may write."""
        with project.operation(kind, description) as op:
            for path in paths:
                target = caption_path(path, extension)
                if mode == "missing" and target.is_file():
                    continue
                _record_caption_change(op, target)
            yield op   # Project.operation keeps only what the run really changed

    # ------------------------------------------------------------ tag editor

    def tag_table(self, name, images=None, caption_extension=".txt") -> dict:
        """Tag frequencies (over `images`, default all), the redundant pairs a consolidation merges,
        and those images' captions (one read of the caption files for all three)."""
        texts = self.captions(name, caption_extension)
        captions = {k: tag_ops.parse_caption(v) for k, v in texts.items()}
        keys = [k for k in images if k in texts] if images is not None else list(texts)
        redundant = tag_ops.find_redundant(captions, keys)
        return {"images": len(keys), "frequency": tag_ops.frequency_table(captions, keys),
                "redundant": [{"generic": g, "specific": s, "images": n} for (g, s), n in redundant.items()],
                "captions": {k: texts[k] for k in keys}}

    def filter(self, name, tags, mode="all", caption_extension=".txt") -> list[str]:
        if mode not in tag_ops.FILTER_MODES:
            raise UserError(f"mode must be one of {', '.join(tag_ops.FILTER_MODES)}, not {mode!r}.", key="mode")
        return tag_ops.filter_images(self._tag_lists(name, caption_extension), tags, mode)

    def edit_tags(self, name, action, *, images=None, caption_extension=".txt", **args) -> dict:
        """One batch edit over the captions (only `images`, when given); undo reverses it.

        action: add (tags, triggers, position, add_separator) | remove (tags) |
        replace (mapping or synonyms text) | dedupe | sort (by, triggers, reverse) |
        consolidate (synonyms, keep).
        """
        if action not in TAG_EDITS:
            raise UserError(f"Unknown tag edit {action!r}.", key="action", fix="Use one of: " + ", ".join(TAG_EDITS))
        project = self.open(name)
        before = self._tag_lists(name, caption_extension)
        keys = list(images) if images is not None else None
        unknown = [k for k in keys or [] if k not in before]
        if unknown:
            raise UserError(f"Not images of this project: {', '.join(unknown[:5])}.", key="images",
                            fix="Pick images from the project's list.")
        after = _apply_edit(before, action, keys, args)
        changed = [k for k in before if before[k] != after[k]]
        with project.operation("tags", f"Tags: {action}") as op:
            for key in changed:
                target = caption_path(project.images_dir / key, caption_extension)
                _record_caption_change(op, target)
                _write_caption(target, tag_ops.format_caption(after[key]))
        return {"action": action, "changed": changed, "operation": op.id if op.entries else None,
                "frequency": tag_ops.frequency_table(after)}

    def _tag_lists(self, name, caption_extension) -> dict[str, list[str]]:
        return {k: tag_ops.parse_caption(v) for k, v in self.captions(name, caption_extension).items()}

    # ------------------------------------------------------------ organise

    def organise(self, name, *, concepts=None, repeats=None, target_per_epoch=None, out_dir=None,
                 caption_extension=".txt", exist_ok=False) -> dict:
        """Build the kohya training folder `<project>/training/N_name/` (copies, captions beside).

        concepts: [{"name": "sks dog", "images": [...] (default all), "repeats": N (default
        suggested)}]; default one concept named after the project. Repeats not given are
        suggested so each concept gives about `target_per_epoch` images per epoch.
        """
        from .organise import DEFAULT_TARGET_PER_EPOCH, build_training_folder, suggest_repeats
        project = self.open(name)
        specs = _concept_specs(project, concepts, repeats)
        target = int(target_per_epoch or DEFAULT_TARGET_PER_EPOCH)
        suggested = suggest_repeats({c["name"]: len(c["paths"]) for c in specs}, target)
        plan = {c["name"]: (c["repeats"] or suggested[c["name"]], c["paths"], None) for c in specs}
        out = self._out_dir(project, out_dir)
        report = build_training_folder(out, plan, caption_extension=caption_extension, exist_ok=bool(exist_ok))
        return _build_report(report, {n: r for n, (r, _p, _c) in plan.items()}, suggested)

    def three_captions(self, name, *, repeats=1, images=None, tags_extension=".txt",
                       sentences_extension=".caption", out_dir=None, exist_ok=False) -> dict:
        """`N_empty/`, `N_tags/`, `N_sentences/` from one image set, matching file names.

        Tag captions are read from `<stem><tags_extension>`, sentences from
        `<stem><sentences_extension>` (caption with the sentence captioner into that extension).
        """
        from .organise import build_three_caption_layout
        project = self.open(name)
        paths = self._selection(project, images)
        tags, sentences, missing = {}, {}, []
        for path in paths:
            t, s = _read_exact(path, tags_extension), _read_exact(path, sentences_extension)
            if t is None or s is None:
                missing.append(path.name)
            tags[str(path)], sentences[str(path)] = t, s
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise UserError(f"{len(missing)} image(s) lack a {tags_extension} tag caption or a "
                            f"{sentences_extension} sentence caption: {shown}.", key="images",
                            fix=f"Run the tagger (into {tags_extension}) and the sentence captioner "
                                f"(into {sentences_extension}) first.")
        out = self._out_dir(project, out_dir)
        report = build_three_caption_layout(paths, tags, sentences, out, repeats, exist_ok=bool(exist_ok))
        counts = repeats if isinstance(repeats, (list, tuple)) else [repeats] * 3
        return _build_report(report, dict(zip(("empty", "tags", "sentences"), counts)), {})

    # ------------------------------------------------------------ with the WebUI's model

    def upscale(self, name, upscale_image, *, upscaler, images=None, scale=None, progress=None,
                should_stop=None, **bucket_settings) -> dict:
        """Upscale the images smaller than their bucket, by the factor the trainer would resize them by.

        `upscale_image(pil_image, scale, upscaler) -> pil_image` is the WebUI's upscaler call.
        Images default to the bucket report's small list (`scale` overrides the factor); each
        becomes a PNG (undo restores the original).
        """
        from .hygiene import bucket_report
        project = self.open(name)
        report = bucket_report(project.image_paths(), bucket_settings)
        small = {Path(s.path).name: s for s in report.small}
        chosen = list(small) if images is None else [project._member(i).name for i in images]
        progress = progress or _noop_progress
        done, problems = [], []
        with project.operation("upscale", f"Upscale with {upscaler}") as op:
            for i, image in enumerate(chosen):
                if should_stop and should_stop():
                    break
                progress(i, len(chosen), f"upscaling {image}")
                path = project.images_dir / image
                try:
                    picture = open_image(path)
                except UserError as exc:
                    problems.append(FileProblem.from_user_error(exc, kind="unreadable").as_dict())
                    continue
                factor = float(scale) if scale else (small[image].upscale if image in small else 1.0)
                factor = math.ceil(factor * 100) / 100   # never a pixel short of the bucket
                if factor <= 1.0:
                    problems.append({"path": image, "message": "Large enough for its bucket; not upscaled.",
                                     "fix": "Give a scale to upscale it anyway."})
                    continue
                result = upscale_image(picture, factor, upscaler)
                want = (round(picture.width * factor), round(picture.height * factor))
                if (result.width, result.height) != want:   # upscalers round their own way
                    from PIL import Image
                    result = result.resize(want, Image.LANCZOS)
                new_name = path.stem + ".png"
                if new_name != image:
                    if (project.images_dir / new_name).exists():
                        problems.append({"path": image, "message": f"{new_name} exists already; not upscaled.",
                                         "fix": "Rename one of the two images."})
                        continue
                    op.remove(image)
                    op.added(new_name)
                else:
                    op.before_change(image)
                _save_png(result, project.images_dir / new_name)
                done.append({"image": new_name, "from": [picture.width, picture.height],
                             "to": [result.width, result.height], "scale": factor})
            progress(len(done), len(chosen), "upscaled")
        return {"upscaler": upscaler, "upscaled": done, "problems": problems,
                "operation": op.id if op.entries else None}

    def reg_images(self, name, generate, *, count, triggers=(), class_name="reg", repeats=1,
                   width=512, height=512, steps=20, seed=-1, negative_prompt="", caption_extension=".txt",
                   progress=None, should_stop=None) -> dict:
        """Regularization images made with the loaded model from the dataset's own captions, with
        the trigger words removed, saved with those captions in `<project>/reg/N_class/`.

        `generate(prompt, negative_prompt, seed, width, height, steps) -> pil_image` is the
        WebUI's txt2img. Point reg_data_dir at the returned folder's parent.
        """
        from .organise import folder_name
        count = int(count)
        if count < 1:
            raise UserError("count must be at least 1.", key="count")
        project = self.open(name)
        trigger_list = tag_ops.as_tags(triggers)
        prompts = [strip_triggers(t, trigger_list) for t in self.captions(name, caption_extension).values()
                   if t is not None]
        prompts = [p for p in prompts if p] or [str(class_name)]
        folder = project.root / REG_DIR / folder_name(int(repeats), class_name)
        folder.mkdir(parents=True, exist_ok=True)
        first = _next_index(folder)
        progress = progress or _noop_progress
        written = []
        for i in range(count):
            if should_stop and should_stop():
                break
            progress(i, count, "generating regularization images")
            prompt = prompts[i % len(prompts)]
            image_seed = -1 if int(seed) < 0 else int(seed) + i
            picture = generate(prompt, negative_prompt, image_seed, int(width), int(height), int(steps))
            stem = f"reg_{first + i:05d}"
            _save_png(picture, folder / f"{stem}.png")
            _write_caption(caption_path(folder / f"{stem}.png", caption_extension), prompt)
            written.append({"image": f"{stem}.png", "caption": prompt})
        progress(len(written), count, "done")
        return {"reg_data_dir": str(folder.parent), "folder": str(folder), "images": written,
                "stopped": len(written) < count}


# ---------------------------------------------------------------- helpers

def strip_triggers(caption: str, triggers) -> str:
    """The caption without its trigger words: as whole tags, and as words inside sentences."""
    keys = {tag_ops.normalise_tag(t) for t in triggers}
    kept = []
    for tag in tag_ops.parse_caption(caption):
        if tag == tag_ops.KEEP_SEPARATOR or tag_ops.normalise_tag(tag) in keys:
            continue
        for trigger in keys:
            tag = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", " ", tag, flags=re.IGNORECASE)
        tag = " ".join(tag.split())
        if tag:
            kept.append(tag)
    return ", ".join(kept)


def _file_progress(progress):
    if progress is None:
        return None
    return lambda done, total, source="": progress(done, total, f"importing {Path(str(source)).name}")


def _read_exact(image: Path, extension: str) -> str | None:
    """The caption in exactly `<stem><extension>` (read_caption alone falls back to other extensions)."""
    return read_caption(image, extension)[0] if caption_path(image, extension).is_file() else None


def _record_caption_change(op, target: Path) -> None:
    if target.is_file():
        op.before_change(target.name)
    else:
        op.added(target.name)


def _write_caption(target: Path, text: str) -> None:
    from .files import write_text_atomic
    write_text_atomic(target, text.strip() + "\n")


def _save_png(picture, path: Path) -> None:
    import io
    from .files import write_bytes_atomic
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def _next_index(folder: Path) -> int:
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := re.fullmatch(r"reg_(\d+)\.png", p.name))]
    return max(taken, default=-1) + 1


# kohya sd-scripts' tag_images_by_wd14_tagger.py argument -> our TagOptions field (presets speak kohya)
KOHYA_TAGGER_ARGS = {"remove_underscore": "replace_underscores", "character_tags_first": "character_first"}


def _from_kohya(given: dict) -> dict:
    """kohya's tagger arguments, mapped: --thresh is the fallback of both thresholds, as in kohya;
    --use_rating_tags(_as_last_tag) include the rating first (last)."""
    values = {KOHYA_TAGGER_ARGS.get(k, k): v for k, v in given.items()
              if k not in ("thresh", "use_rating_tags", "use_rating_tags_as_last_tag")}
    if given.get("thresh") is not None:
        values.setdefault("general_threshold", given["thresh"])
        values.setdefault("character_threshold", given["thresh"])
    if given.get("use_rating_tags") or given.get("use_rating_tags_as_last_tag"):
        values["include_rating"] = True
        values["rating_position"] = "last" if given.get("use_rating_tags_as_last_tag") else "first"
    return values


def _tag_options(cls, given: dict):
    known = {f.name for f in fields(cls)}
    values = _from_kohya(given)
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"Unknown tagger option {unknown[0]!r}.", key=unknown[0],
                        fix="Tagger options: " + ", ".join(sorted(known | {"thresh", "use_rating_tags",
                            "use_rating_tags_as_last_tag", *KOHYA_TAGGER_ARGS})))
    for key in ("general_threshold", "character_threshold"):
        if key in values:
            try:
                values[key] = float(values[key])
            except (TypeError, ValueError):
                raise UserError(f"{key} must be a number between 0 and 1.", key=key) from None
            if not 0.0 <= values[key] <= 1.0:
                raise UserError(f"{key} must be between 0 and 1, not {values[key]}.", key=key)
    if isinstance(values.get("undesired_tags"), str):
        values["undesired_tags"] = tag_ops.as_tags(values["undesired_tags"])
    return cls(**values)


def _caption_report(report) -> dict:
    def rel(p):
        return Path(p).name
    return {"written": [rel(p) for p in report.written], "unchanged": [rel(p) for p in report.unchanged],
            "skipped": [rel(p) for p in report.skipped],
            "failed": [{"image": rel(p), "message": str(m)} for p, m in report.failed],
            "stopped": report.stopped, "provider": report.provider, "provider_note": report.provider_note,
            "seconds": round(report.seconds, 3)}


def _apply_edit(captions: dict, action: str, keys, args: dict) -> dict:
    def pick(*names):
        unknown = sorted(set(args) - set(names))
        if unknown:
            raise UserError(f"'{action}' takes no option {unknown[0]!r}.", key=unknown[0],
                            fix="Options of " + action + ": " + (", ".join(names) or "none"))
        return {n: args[n] for n in names if n in args}
    try:
        if action == "add":
            return tag_ops.add_tags(captions, keys=keys, **pick("tags", "triggers", "position", "add_separator"))
        if action == "remove":
            return tag_ops.remove_tags(captions, keys=keys, **pick("tags"))
        if action == "replace":
            opts = pick("mapping", "synonyms")
            return tag_ops.replace_tags(captions, opts.get("mapping", opts.get("synonyms", {})), keys=keys)
        if action == "dedupe":
            pick()
            return tag_ops.dedupe_tags(captions, keys=keys)
        if action == "sort":
            return tag_ops.sort_tags(captions, keys=keys, **pick("by", "triggers", "reverse"))
        return tag_ops.consolidate_tags(captions, keys=keys, **pick("synonyms", "keep"))
    except ValueError as exc:
        raise UserError(str(exc), key=action) from None


def _concept_specs(project: Project, concepts, repeats) -> list[dict]:
    if not concepts:
        concepts = [{"name": project.name, "repeats": repeats}]
    specs = []
    for c in concepts:
        if not isinstance(c, dict) or not str(c.get("name") or "").strip():
            raise UserError("Every concept needs a name.", key="concepts",
                            fix='e.g. [{"name": "sks dog", "images": ["a.png"], "repeats": 10}]')
        images = c.get("images")
        paths = project.image_paths() if images is None else [project._member(i) for i in images]
        if not paths:
            raise UserError(f"Concept '{c['name']}' has no images.", key="concepts",
                            fix="Import images first, or give the concept some.")
        r = c.get("repeats")
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise UserError(f"repeats of '{c['name']}' must be a whole number ≥ 1, not {r!r}.", key="repeats")
        specs.append({"name": str(c["name"]), "paths": paths, "repeats": r})
    return specs


def _build_report(report, repeats: dict, suggested: dict) -> dict:
    data = asdict(report)
    data["repeats"] = repeats
    data["suggested_repeats"] = suggested
    data["images"] = len(report.images)
    return data


def _relative_paths(data, folder: Path):
    """Report paths inside images/ as plain image names (what the other routes take)."""
    prefix = str(folder) + os.sep
    if isinstance(data, dict):
        return {k: _relative_paths(v, folder) for k, v in data.items()}
    if isinstance(data, list):
        return [_relative_paths(v, folder) for v in data]
    if isinstance(data, str) and data.startswith(prefix):
        return data[len(prefix):]
    return data
