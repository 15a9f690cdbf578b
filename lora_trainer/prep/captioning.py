"""Writing tagger tags and captioner sentences as caption files: the batched pipeline, its
sequential baseline, undo.

The pipeline knows a model only as a `Captioner` (below): tagger.WD14Tagger and
sentences.SentenceCaptioner are both one, and neither module is imported here.
Writes are atomic and every change is recorded (with the previous bytes) for undo_captions.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..dataset.captions import read_caption
from ..errors import UserError
from .files import backup_path, write_bytes_atomic, write_text_atomic
from .tagger_models import CPU_PROVIDER
from .tags import KEEP_SEPARATOR, format_caption, normalise_tag, parse_caption

WRITE_MODES = ("overwrite", "append", "missing")
# Batches whose loading is queued while one is on the model: with one, the loaders idle at each
# batch's tail (its last image) and whenever the model is slower than usual.
PREFETCH_BATCHES = 2


@runtime_checkable
class Captioner(Protocol):
    """A loaded captioning model as the pipeline uses it (tagger.WD14Tagger, sentences.SentenceCaptioner)."""

    provider: str                # what runs the model: an onnxruntime provider or a torch device
    provider_note: str | None    # None, or why it is not what was asked for

    def prepare(self, image) -> object:
        """A path or a PIL image -> the model's input (called in worker threads; UserError for a bad file)."""

    def infer(self, inputs: list) -> list:
        """Prepared inputs -> one result per image (a tagger.TagResult, a sentence)."""


@dataclass
class CaptionChange:
    """One caption file written: enough to undo it."""

    caption_path: str
    previous: bytes | None   # the file's bytes before, None when it did not exist
    backup_path: str | None  # the .bak copy written beside it, if any


@dataclass
class CaptionReport:
    written: list[str] = field(default_factory=list)      # caption files written
    unchanged: list[str] = field(default_factory=list)    # images whose caption already said this
    skipped: list[str] = field(default_factory=list)      # images skipped ("missing": caption exists)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, message)
    changes: list[CaptionChange] = field(default_factory=list)
    results: dict[str, object] = field(default_factory=dict)  # image -> tagger.TagResult / sentence
    stopped: bool = False
    provider: str = CPU_PROVIDER   # onnxruntime provider (tagger) or torch device (sentences)
    provider_note: str | None = None
    seconds: float = 0.0


def _caption_file(image, extension: str) -> Path:
    ext = extension if extension.startswith(".") else "." + extension
    return Path(os.path.splitext(str(image))[0] + ext)


def _existing(image, extension: str) -> tuple[str | None, str | None]:
    """(current caption text or None when there is no file, problem) for append mode."""
    if not _caption_file(image, extension).is_file():
        return None, None
    text, problem = read_caption(image, extension)
    if problem is not None and problem.severity == "warning" and problem.kind != "empty":
        return None, problem.message + " Not changed (append mode)."
    return text or "", None


def _tags_text(image, result, mode: str, extension: str) -> tuple[str | None, str | None]:
    """(text to write, problem) for one image's tags (a tagger.TagResult); text None = leave the file alone."""
    new_tags = list(result.tags)
    if mode == "append":
        old_text, problem = _existing(image, extension)
        if problem:
            return None, problem
        if old_text is not None:
            old = parse_caption(old_text, KEEP_SEPARATOR)
            have = {normalise_tag(t) for t in old}
            new_tags = old + [t for t in new_tags if normalise_tag(t) not in have]
    return format_caption(new_tags, KEEP_SEPARATOR) + "\n", None


def _parts(text: str) -> str:
    """Comparison form of a caption: its comma-separated parts normalised, '|||' read as a comma."""
    pieces = (normalise_tag(x) for x in text.replace(KEEP_SEPARATOR, ",").split(","))
    return ", ".join(x for x in pieces if x)


def _has_part(text: str, part: str) -> bool:
    """True when `part` is one whole comma-separated stretch of `text`; a sentence may hold
    commas itself, so this is a bounded substring test rather than a split."""
    return f", {_parts(part)}, " in f", {_parts(text)}, "


def _sentence_text(image, sentence: str, mode: str, extension: str,
                   prefix: str = "") -> tuple[str | None, str | None]:
    """(text to write, problem) for one generated sentence; `prefix` (trigger words) goes first.

    append: the sentence goes after the existing caption with ', ' (not when it is already
    there), and the prefix in front unless the caption already starts with it.
    """
    sentence = " ".join(sentence.split())
    prefix = " ".join(str(prefix or "").split()).strip(", ")
    if not sentence:
        return None, "The captioner returned an empty caption; the file was not changed."
    text = sentence
    if mode == "append":
        old_text, problem = _existing(image, extension)
        if problem:
            return None, problem
        old_text = (old_text or "").strip().rstrip(",").strip()
        if old_text:
            text = old_text if _has_part(old_text, sentence) else f"{old_text}, {sentence}"
    if prefix and not f"{_parts(text)}, ".startswith(f"{_parts(prefix)}, "):
        # 'sks |||' keeps the trigger fixed for shuffle_caption: no comma after the separator.
        text = f"{prefix} {text}" if prefix.endswith(KEEP_SEPARATOR) else f"{prefix}, {text}"
    return text + "\n", None


def _write_caption(image, text: str, extension: str, backup: bool, report: CaptionReport) -> None:
    target = _caption_file(image, extension)
    previous = None
    if target.is_file():
        previous = target.read_bytes()
        if previous == text.encode("utf-8"):
            report.unchanged.append(str(image))
            return
    saved = None
    if previous is not None and backup:
        saved = backup_path(target)
        saved.write_bytes(previous)
    write_text_atomic(target, text)
    report.written.append(str(target))
    report.changes.append(CaptionChange(str(target), previous, str(saved) if saved else None))


def undo_captions(changes: Iterable[CaptionChange]) -> list[str]:
    """Put back what `caption_images` changed (newest first); returns the files restored/removed."""
    done = []
    for change in reversed(list(changes)):
        path = Path(change.caption_path)
        if change.previous is None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        else:
            write_bytes_atomic(path, change.previous)
        done.append(str(path))
    return done


def _load(prepare: Callable, path):
    """(prepared input, None) or (None, message): a bad file must not end the run."""
    try:
        return prepare(path), None
    except UserError as exc:
        return None, exc.text()
    except Exception as exc:  # noqa: BLE001 - e.g. a Pillow decoder bug on one odd file
        return None, f"{path}: {type(exc).__name__}: {exc}"


def _check_mode(mode: str):
    if mode not in WRITE_MODES:
        raise ValueError(f"mode must be one of {WRITE_MODES}, not {mode!r}")


def _todo(paths, mode, extension, report):
    todo = []
    for p in paths:
        if mode == "missing" and _caption_file(p, extension).is_file():
            report.skipped.append(str(p))
        else:
            todo.append(p)
    return todo


def _finish(image, result, text_for: Callable, extension, backup, report):
    """Record `result` and write the caption `text_for(image, result)` gives (text, problem)."""
    report.results[str(image)] = result
    text, problem = text_for(image, result)
    if problem:
        report.failed.append((str(image), problem))
        return
    try:
        _write_caption(image, text, extension, backup, report)
    except OSError as exc:
        report.failed.append((str(image), f"Cannot write the caption ({exc.strerror or exc})."))


def _run_batches(todo: list, report: CaptionReport, *, prepare: Callable, infer: Callable,
                 text_for: Callable, extension: str, backup: bool, batch_size: int,
                 progress, should_stop, workers: int | None, thread_name: str) -> None:
    """The shared batched pipeline: `prepare(path)` in a thread pool (the next PREFETCH_BATCHES
    batches while the current one is in `infer(prepared list) -> results`), then one caption file
    per result."""
    total = len(todo)
    batch_size = max(1, int(batch_size))
    batches = [todo[i:i + batch_size] for i in range(0, total, batch_size)]
    workers = workers or min(8, os.cpu_count() or 1)
    done = 0
    if progress:
        progress(0, total)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name) as pool:
        def queue(k):
            return [pool.submit(_load, prepare, p) for p in batches[k]]

        pending = deque(queue(k) for k in range(min(1 + PREFETCH_BATCHES, len(batches))))
        for k, batch in enumerate(batches):
            if should_stop and should_stop():
                report.stopped = True
                for f in (f for futures in pending for f in futures):
                    f.cancel()
                break
            loaded = [f.result() for f in pending.popleft()]
            # Keep the loaders PREFETCH_BATCHES ahead before this batch goes to the model.
            if k + 1 + PREFETCH_BATCHES < len(batches):
                pending.append(queue(k + 1 + PREFETCH_BATCHES))
            good, inputs = [], []
            for path, (item, error) in zip(batch, loaded):
                if error is not None:
                    report.failed.append((str(path), error))
                else:
                    good.append(path)
                    inputs.append(item)
            if inputs:
                for path, result in zip(good, infer(inputs)):
                    _finish(path, result, text_for, extension, backup, report)
            done += len(batch)
            if progress:
                progress(done, total)


def caption_images(paths: Sequence, tagger: Captioner, mode: str = "overwrite", *,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, batch_size: int = 8,
                   options=None, extension: str = ".txt", backup: bool = True,
                   workers: int | None = None) -> CaptionReport:
    """Tag `paths` with a tagger.WD14Tagger (`options`: a tagger.TagOptions, None = the tagger's
    own) and write `<stem><extension>` beside each image.

    mode "overwrite": replace the caption; "append": add the new tags after the existing ones
    (no duplicates; a `|||` part is kept); "missing": only images without a caption file.
    Writes are atomic; a replaced caption is copied to `<caption>.bak` first (`backup`) and
    every change is in ``report.changes`` for `undo_captions`.
    Decoding/resizing of the next batch runs in a thread pool while the current batch is on
    the model. `should_stop()` is checked between
    batches; `progress(done, total)` after each.
    A file that cannot be decoded is reported in ``report.failed`` and the rest go on.
    """
    _check_mode(mode)
    start = time.perf_counter()
    report = CaptionReport(provider=tagger.provider, provider_note=tagger.provider_note)
    _run_batches(_todo(paths, mode, extension, report), report, prepare=tagger.prepare,
                 infer=lambda arrays: tagger.infer(arrays, options),
                 text_for=lambda image, result: _tags_text(image, result, mode, extension),
                 extension=extension, backup=backup, batch_size=batch_size, progress=progress,
                 should_stop=should_stop, workers=workers, thread_name="wd14-load")
    report.seconds = time.perf_counter() - start
    return report


def caption_images_sequential(paths: Sequence, tagger: Captioner, mode: str = "overwrite", *,
                              progress: Callable[[int, int], None] | None = None,
                              should_stop: Callable[[], bool] | None = None,
                              options=None, extension: str = ".txt",
                              backup: bool = True) -> CaptionReport:
    """The baseline for benchmarking caption_images: decode, run and write one image at a time
    on the calling thread. Same files and report as caption_images."""
    _check_mode(mode)
    start = time.perf_counter()
    report = CaptionReport(provider=tagger.provider, provider_note=tagger.provider_note)
    todo = _todo(paths, mode, extension, report)
    total = len(todo)
    text_for = lambda image, result: _tags_text(image, result, mode, extension)  # noqa: E731
    if progress:
        progress(0, total)
    for i, path in enumerate(todo):
        if should_stop and should_stop():
            report.stopped = True
            break
        array, error = _load(tagger.prepare, path)
        if error is not None:
            report.failed.append((str(path), error))
        else:
            _finish(path, tagger.infer([array], options)[0], text_for, extension, backup, report)
        if progress:
            progress(i + 1, total)
    report.seconds = time.perf_counter() - start
    return report


def caption_images_with_sentences(paths: Sequence, captioner: Captioner, mode: str = "overwrite", *,
                                  progress: Callable[[int, int], None] | None = None,
                                  should_stop: Callable[[], bool] | None = None, batch_size: int = 4,
                                  extension: str = ".txt", backup: bool = True, prefix: str = "",
                                  workers: int | None = None) -> CaptionReport:
    """Natural-language captions (sentences.SentenceCaptioner) into `<stem><extension>`.

    Same modes, atomic writes, backups, undo, stop/progress and per-file failures as
    caption_images. `prefix` (e.g. trigger words) is put in front: 'sks dog, a dog on a couch'.
    append: the sentence follows the existing caption after ', ' unless it is already there.
    ``report.results`` maps each image to its generated sentence (without the prefix);
    ``report.provider`` is the torch device used ("cuda", "cpu").
    """
    _check_mode(mode)
    start = time.perf_counter()
    report = CaptionReport(provider=captioner.provider, provider_note=captioner.provider_note)
    _run_batches(_todo(paths, mode, extension, report), report, prepare=captioner.prepare,
                 infer=captioner.infer,
                 text_for=lambda image, sentence: _sentence_text(image, sentence, mode, extension, prefix),
                 extension=extension, backup=backup, batch_size=batch_size, progress=progress,
                 should_stop=should_stop, workers=workers, thread_name="caption-load")
    report.seconds = time.perf_counter() - start
    return report
