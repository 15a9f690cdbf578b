"""Writing tagger output as caption files: the batched pipeline, its sequential baseline, undo.

Writes are atomic and every change is recorded (with the previous bytes) for undo_captions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..dataset.captions import read_caption
from ..errors import UserError
from .files import backup_path, write_bytes_atomic, write_text_atomic
from .tagger_models import CPU_PROVIDER
from .tags import KEEP_SEPARATOR, format_caption, normalise_tag, parse_caption

if TYPE_CHECKING:  # tagger re-exports this module, so it is not imported at run time
    from .tagger import TagOptions, TagResult, WD14Tagger

WRITE_MODES = ("overwrite", "append", "missing")


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
    results: dict[str, TagResult] = field(default_factory=dict)  # image -> tags
    stopped: bool = False
    provider: str = CPU_PROVIDER
    provider_note: str | None = None
    seconds: float = 0.0


def _caption_file(image, extension: str) -> Path:
    ext = extension if extension.startswith(".") else "." + extension
    return Path(os.path.splitext(str(image))[0] + ext)


def _new_text(image, result: TagResult, mode: str, extension: str) -> tuple[str | None, str | None]:
    """(text to write, problem) for one image; text None = leave the file alone."""
    target = _caption_file(image, extension)
    new_tags = list(result.tags)
    if mode == "append" and target.is_file():
        text, problem = read_caption(image, extension)
        if problem is not None and problem.severity == "warning" and problem.kind != "empty":
            return None, problem.message + " Not changed (append mode)."
        old = parse_caption(text or "", KEEP_SEPARATOR)
        have = {normalise_tag(t) for t in old}
        new_tags = old + [t for t in new_tags if normalise_tag(t) not in have]
    return format_caption(new_tags, KEEP_SEPARATOR) + "\n", None


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


def _load(tagger: WD14Tagger, path):
    """(array, None) or (None, message): a bad file must not end the run."""
    try:
        return tagger.prepare(path), None
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


def _finish(image, result, mode, extension, backup, report):
    report.results[str(image)] = result
    text, problem = _new_text(image, result, mode, extension)
    if problem:
        report.failed.append((str(image), problem))
        return
    try:
        _write_caption(image, text, extension, backup, report)
    except OSError as exc:
        report.failed.append((str(image), f"Cannot write the caption ({exc.strerror or exc})."))


def caption_images(paths: Sequence, tagger: WD14Tagger, mode: str = "overwrite", *,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, batch_size: int = 8,
                   options: TagOptions | None = None, extension: str = ".txt", backup: bool = True,
                   workers: int | None = None) -> CaptionReport:
    """Tag `paths` and write `<stem><extension>` beside each image.

    mode "overwrite": replace the caption; "append": add the new tags after the existing ones
    (no duplicates; a `|||` part is kept); "missing": only images without a caption file.
    Writes are atomic; a replaced caption is copied to `<caption>.bak` first (`backup`) and
    every change is in ``report.changes`` for `undo_captions`.
    Decoding/resizing of the next batch runs in a thread pool while the current batch is on
    the model (decodes one at a time, see tagger._DECODE_LOCK). `should_stop()` is checked between
    batches; `progress(done, total)` after each.
    A file that cannot be decoded is reported in ``report.failed`` and the rest go on.
    """
    _check_mode(mode)
    start = time.perf_counter()
    report = CaptionReport(provider=tagger.provider, provider_note=tagger.provider_note)
    todo = _todo(paths, mode, extension, report)
    total = len(todo)
    batch_size = max(1, int(batch_size))
    batches = [todo[i:i + batch_size] for i in range(0, total, batch_size)]
    workers = workers or min(8, os.cpu_count() or 1)
    done = 0
    if progress:
        progress(0, total)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wd14-load") as pool:
        pending = [pool.submit(_load, tagger, p) for p in batches[0]] if batches else []
        for k, batch in enumerate(batches):
            if should_stop and should_stop():
                report.stopped = True
                for f in pending:
                    f.cancel()
                break
            loaded = [f.result() for f in pending]
            # Queue the next batch's decoding before this batch goes to the model.
            pending = [pool.submit(_load, tagger, p) for p in batches[k + 1]] if k + 1 < len(batches) else []
            good, arrays = [], []
            for path, (array, error) in zip(batch, loaded):
                if error is not None:
                    report.failed.append((str(path), error))
                else:
                    good.append(path)
                    arrays.append(array)
            if arrays:
                probs = tagger.predict(arrays)
                for path, row in zip(good, probs):
                    _finish(path, tagger.postprocess(row, options), mode, extension, backup, report)
            done += len(batch)
            if progress:
                progress(done, total)
    report.seconds = time.perf_counter() - start
    return report


def caption_images_sequential(paths: Sequence, tagger: WD14Tagger, mode: str = "overwrite", *,
                              progress: Callable[[int, int], None] | None = None,
                              should_stop: Callable[[], bool] | None = None,
                              options: TagOptions | None = None, extension: str = ".txt",
                              backup: bool = True) -> CaptionReport:
    """The baseline for benchmarking caption_images: decode, run and write one image at a time
    on the calling thread. Same files and report as caption_images."""
    _check_mode(mode)
    start = time.perf_counter()
    report = CaptionReport(provider=tagger.provider, provider_note=tagger.provider_note)
    todo = _todo(paths, mode, extension, report)
    total = len(todo)
    if progress:
        progress(0, total)
    for i, path in enumerate(todo):
        if should_stop and should_stop():
            report.stopped = True
            break
        array, error = _load(tagger, path)
        if error is not None:
            report.failed.append((str(path), error))
        else:
            row = tagger.predict([array])[0]
            _finish(path, tagger.postprocess(row, options), mode, extension, backup, report)
        if progress:
            progress(i + 1, total)
    report.seconds = time.perf_counter() - start
    return report
