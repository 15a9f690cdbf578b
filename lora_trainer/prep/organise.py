"""Organise images into the kohya training layout: ``out_dir/N_name/`` folders with captions.

``out_dir`` is what train_data_dir must point at (the parent of the N_name folders).
Images are always copied, never moved. Everything is checked before the first file is
written (bad names, missing images, an out_dir inside a source folder — the kohya_ss GUI's
"recursive copy bomb", bmaltais/kohya_ss#1761), and concept names are stripped of the trailing
spaces/newlines that made bad Windows paths (bmaltais/kohya_ss#1541).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..dataset.captions import caption_path, normalise_extension
from ..dataset.images import IMAGE_EXTENSIONS
from ..errors import UserError
from .files import copy_atomic, write_text_atomic
from .names import bad_chars
from .tags import format_caption

# hollowstrawberry's kohya-colab advice: images x repeats per concept between 200 and 400.
DEFAULT_TARGET_PER_EPOCH = 300


# ---------------------------------------------------------------- names and repeats

def clean_name(name) -> str:
    """A concept name usable as the `name` of `N_name` on every OS.

    Leading/trailing whitespace (spaces, tabs, newlines) and trailing dots are removed, inner
    line breaks/tabs become spaces. Characters Windows forbids in folder names raise UserError.
    """
    text = re.sub(r"[\r\n\t]+", " ", str(name or ""))
    text = re.sub(" {2,}", " ", text).strip().rstrip(". ")
    if not text:
        raise UserError(f"The concept name {name!r} is empty.", fix="Give every concept a name, "
                        "e.g. its trigger word and class: 'sks dog'.")
    bad = bad_chars(text)
    if bad:
        shown = " ".join(repr(c)[1:-1] for c in bad)
        raise UserError(f"The concept name '{text}' contains characters a folder name cannot have: {shown}.",
                        fix='Remove < > : " / \\ | ? * from the name.')
    return text


def folder_name(repeats: int, name) -> str:
    """'10_sks dog' for (10, ' sks dog\\n')."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"Repeats must be a whole number of at least 1, not {repeats!r}.",
                        fix="kohya skips folders whose N is below 1.")
    return f"{repeats}_{clean_name(name)}"


def suggest_repeats(concepts: Mapping[str, int], target_per_epoch: int = DEFAULT_TARGET_PER_EPOCH,
                    max_repeats: int | None = None) -> dict[str, int]:
    """{name: repeats} so every concept contributes about `target_per_epoch` images per epoch.

    repeats = round(target / images) (halves round up), at least 1, at most `max_repeats`.
    Balancing this way keeps a concept with few images from being drowned by a big one.
    """
    if target_per_epoch is None or target_per_epoch <= 0:
        raise UserError(f"target_per_epoch must be positive, not {target_per_epoch!r}.")
    out = {}
    for name, count in concepts.items():
        count = int(count)
        if count <= 0:
            raise UserError(f"Concept '{name}' has no images.", fix="Add images or leave the concept out.")
        repeats = max(1, math.floor(target_per_epoch / count + 0.5))
        if max_repeats:
            repeats = min(repeats, max(1, int(max_repeats)))
        out[name] = repeats
    return out


# ---------------------------------------------------------------- building the folders

@dataclass
class CopiedImage:
    source: str
    image: str                 # the copy in N_name/
    caption: str | None        # the caption file written / copied beside it, if any


@dataclass
class BuildReport:
    train_data_dir: str                                  # point train_data_dir here (the parent)
    folders: dict[str, str] = field(default_factory=dict)  # concept name -> N_name folder
    images: list[CopiedImage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _captions_for(paths: list[Path], captions, name: str) -> list:
    """Per-image caption (str, list of tags, or None = copy the existing caption file)."""
    if captions is None:
        return [None] * len(paths)
    if isinstance(captions, Mapping):
        lookup = {}
        for key, value in captions.items():
            lookup[str(key)] = value
            lookup[str(Path(key).resolve())] = value
        return [lookup.get(str(p), lookup.get(str(p.resolve()))) for p in paths]
    captions = list(captions)
    if len(captions) != len(paths):
        raise UserError(f"Concept '{name}' has {len(paths)} images but {len(captions)} captions.",
                        fix="Give one caption per image (or a dict keyed by image path).")
    return captions


def _unique_names(paths: list[Path]) -> list[str]:
    """Target file names: the source name with a lower-case extension, stems made unique
    (a.png and a.jpg would share a.txt; case-insensitive for Windows)."""
    used: set[str] = set()
    names = []
    for p in paths:
        stem, ext = p.stem, p.suffix.lower()
        candidate, n = stem, 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{stem}_{n}"
        used.add(candidate.lower())
        names.append(candidate + ext)
    return names


def _caption_text(value) -> str:
    if isinstance(value, str):
        lines = [line.strip() for line in value.splitlines() if line.strip()]
        text = lines[0] if lines else ""
    else:
        text = format_caption(value)
    # An empty caption is written as a single newline: kohya then trains with "" (a 0-byte
    # caption file is an assertion error there).
    return text + "\n"


@dataclass
class _Plan:
    name: str
    folder: Path
    sources: list[Path]
    targets: list[str]
    captions: list


def build_training_folder(out_dir, concepts: Mapping[str, tuple], *, caption_extension: str = ".txt",
                          exist_ok: bool = False) -> BuildReport:
    """Create `out_dir/N_name/` for each concept {name: (repeats, [image paths], captions)}.

    captions: None (copy each image's existing `<stem><caption_extension>` if there is one),
    a list aligned with the paths, or a dict {image path: caption}; a caption is a string or
    a list of tags (formatted with ', ' and ' ||| '); None for one image copies its file.
    Images are copied (extension lower-cased so kohya's glob sees it; clashing stems get
    '_2', '_3'); captions are written beside them. Refuses (UserError, nothing written):
    an out_dir inside a source folder, a missing or unsupported image, duplicate names, and —
    unless `exist_ok` — an existing non-empty N_name folder or another 'M_name' for the name.
    """
    ext = normalise_extension(caption_extension)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError("The output folder is a file.", path=out, fix="Choose a folder.")
    out_resolved = out.resolve()
    if not concepts:
        raise UserError("No concepts to build.", fix="Add at least one concept with images.")

    plans: list[_Plan] = []
    seen_names: dict[str, str] = {}
    warnings: list[str] = []
    for raw_name, spec in concepts.items():
        try:
            repeats, paths, captions = spec
        except (TypeError, ValueError):
            raise UserError(f"Concept {raw_name!r} must be (repeats, [image paths], captions or None).") from None
        folder = folder_name(repeats, raw_name)
        name = folder.split("_", 1)[1]
        if name.lower() in seen_names:
            raise UserError(f"Two concepts are both named '{name}' ({seen_names[name.lower()]!r} and "
                            f"{raw_name!r}).", fix="Give each concept its own name.")
        seen_names[name.lower()] = raw_name
        sources = [Path(p).expanduser() for p in paths]
        if not sources:
            raise UserError(f"Concept '{name}' has no images.", fix="Add images or remove the concept.")
        for src in sources:
            if not src.is_file():
                raise UserError("The image does not exist.", path=src, fix="Check the path.")
            if src.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UserError(f"kohya does not read {src.suffix or 'extension-less'} files.", path=src,
                                fix="Convert it to PNG or JPEG first (" + " ".join(IMAGE_EXTENSIONS) + ").")
            src_dir = src.resolve().parent
            if _inside(out_resolved, src_dir) or (out_resolved / folder) == src_dir:
                raise UserError("The output folder is inside a folder the images come from; building "
                                "there would mix the copies with the originals.", path=out,
                                fix=f"Choose an output folder outside {src_dir}.")
        plans.append(_Plan(name, out / folder, sources, _unique_names(sources),
                           _captions_for(sources, captions, name)))

    # Existing folders: never mix two repeat counts of one concept by accident.
    if out.is_dir():
        existing = [p for p in out.iterdir() if p.is_dir()]
        for plan in plans:
            for other in existing:
                n, _, other_name = other.name.partition("_")
                if other_name.strip().lower() != plan.name.lower() or not n.isdigit():
                    continue
                if other.name != plan.folder.name:
                    message = (f"{other.name} already exists in {out} for the same concept as "
                               f"{plan.folder.name}; kohya would train both.")
                    if not exist_ok:
                        raise UserError(message, path=other, fix="Remove or rename it, or choose another "
                                        "output folder.")
                    warnings.append(message)
                elif any(other.iterdir()) and not exist_ok:
                    raise UserError(f"{other.name} already exists and is not empty.", path=other,
                                    fix="Choose an empty output folder (or allow adding to it).")

    report = BuildReport(str(out), warnings=warnings)
    for plan in plans:
        plan.folder.mkdir(parents=True, exist_ok=True)
        report.folders[plan.name] = str(plan.folder)
        for src, target, caption in zip(plan.sources, plan.targets, plan.captions):
            dst = plan.folder / target
            copy_atomic(src, dst)
            cap_dst = caption_path(dst, ext)
            written = None
            if caption is not None:
                write_text_atomic(cap_dst, _caption_text(caption))
                written = str(cap_dst)
            else:
                cap_src = caption_path(src, ext)
                if cap_src.is_file():
                    copy_atomic(cap_src, cap_dst)
                    written = str(cap_dst)
            report.images.append(CopiedImage(str(src), str(dst), written))
    return report


def build_three_caption_layout(images: Sequence, tagger_captions, sentence_captions, out_dir,
                               repeats, *, names: tuple[str, str, str] = ("empty", "tags", "sentences"),
                               caption_extension: str = ".txt", exist_ok: bool = False) -> BuildReport:
    """The "three captions" recipe: the same images three times, under matching file names.

    `N_empty/` (empty captions), `N_tags/` (tagger captions) and `N_sentences/`
    (natural-language captions). Captions are lists aligned with `images` or dicts keyed by
    image path; every image needs both. `repeats` is one int for all three folders or a
    3-tuple. Empty captions are written as a single newline: kohya (and this project's scan)
    trains those images with an empty caption.
    """
    images = [Path(p) for p in images]
    if not images:
        raise UserError("No images for the three-caption layout.", fix="Select some images.")
    tags = _captions_for(images, tagger_captions, names[1])
    sentences = _captions_for(images, sentence_captions, names[2])
    missing = [p.name for p, t, s in zip(images, tags, sentences) if t is None or s is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} image(s) lack a tag or sentence caption: {shown}.",
                        fix="Caption every image both ways first.")
    counts = tuple(repeats) if isinstance(repeats, (tuple, list)) else (repeats,) * 3
    if len(counts) != 3:
        raise UserError(f"repeats must be one number or three, not {repeats!r}.")
    concepts = {
        names[0]: (counts[0], images, [""] * len(images)),
        names[1]: (counts[1], images, tags),
        names[2]: (counts[2], images, sentences),
    }
    return build_training_folder(out_dir, concepts, caption_extension=caption_extension, exist_ok=exist_ok)
