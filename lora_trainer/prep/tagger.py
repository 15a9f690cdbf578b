"""WD14 / WD v3 tagger (SmilingWolf ONNX models): load, tag images, write caption files.

Runs outside the WebUI. Only Pillow is imported at module level; onnxruntime, numpy and
huggingface_hub are imported where they are used, so the tab loads without them.

Model contract (shared/docs/dataset-prep.md §1): a folder with ``model.onnx`` and
``selected_tags.csv`` (tag_id,name,category,count; row i is output i; category 0 general,
4 character, 9 rating). Input NHWC float32 [batch, S, S, 3], BGR, raw 0-255; output
[batch, n_tags] probabilities (the sigmoid is in the graph). v3 models have a dynamic batch
dimension, v2 models a fixed batch of 1: both are read from the session, never assumed.

onnxruntime does not fail when the CUDA provider cannot load (wrong CUDA/cuDNN): it runs on
CPU and only logs. `WD14Tagger` therefore reports the providers the session actually uses
(``providers`` / ``provider``) and explains a fallback in ``provider_note``.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..dataset.captions import read_caption
from ..dataset.images import open_image
from ..errors import UserError
from .tags import KEEP_SEPARATOR, backup_path, format_caption, normalise_tag, parse_caption, \
    write_text_atomic

MODEL_FILE = "model.onnx"
LABELS_FILE = "selected_tags.csv"
DEFAULT_IMAGE_SIZE = 448

CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4
CATEGORY_RATING = 9

# toriato's list (picobyte tagger/settings.py DEFAULT_KAMOJIS): names whose '_' is kept.
KAOMOJI = ("0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
           "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||")

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DEFAULT_PROVIDERS = (CUDA_PROVIDER, "DmlExecutionProvider", CPU_PROVIDER)

WRITE_MODES = ("overwrite", "append", "missing")

# dataset.images.open_image wraps each decode in warnings.catch_warnings(), which edits the
# process-wide filter list: two threads inside it at once can leave its "error" filter installed
# for the whole WebUI. Decodes are therefore serialised; padding/resizing/array conversion
# (most of the per-image work after decoding) run in parallel, and all of it overlaps inference.
_DECODE_LOCK = threading.Lock()


@dataclass(frozen=True)
class TaggerModel:
    name: str
    repo_id: str
    dataset: str                  # "v3" | "v2" | "v1": the tag set / training data generation
    fixed_batch: bool             # True: the ONNX batch dimension is 1 (v2/v1)
    threshold: float | None = None  # the model card's validation P=R threshold, if published


MODELS: dict[str, TaggerModel] = {m.name: m for m in (
    TaggerModel("wd-swinv2-tagger-v3", "SmilingWolf/wd-swinv2-tagger-v3", "v3", False, 0.2653),
    TaggerModel("wd-convnext-tagger-v3", "SmilingWolf/wd-convnext-tagger-v3", "v3", False, 0.2682),
    TaggerModel("wd-vit-tagger-v3", "SmilingWolf/wd-vit-tagger-v3", "v3", False, 0.2614),
    TaggerModel("wd-vit-large-tagger-v3", "SmilingWolf/wd-vit-large-tagger-v3", "v3", False, None),
    TaggerModel("wd-eva02-large-tagger-v3", "SmilingWolf/wd-eva02-large-tagger-v3", "v3", False, 0.5296),
    TaggerModel("wd-v1-4-moat-tagger-v2", "SmilingWolf/wd-v1-4-moat-tagger-v2", "v2", True, None),
    TaggerModel("wd-v1-4-swinv2-tagger-v2", "SmilingWolf/wd-v1-4-swinv2-tagger-v2", "v2", True, None),
    TaggerModel("wd-v1-4-convnext-tagger-v2", "SmilingWolf/wd-v1-4-convnext-tagger-v2", "v2", True, 0.3685),
    TaggerModel("wd-v1-4-convnextv2-tagger-v2", "SmilingWolf/wd-v1-4-convnextv2-tagger-v2", "v2", True, None),
    TaggerModel("wd-v1-4-vit-tagger-v2", "SmilingWolf/wd-v1-4-vit-tagger-v2", "v2", True, 0.3537),
    TaggerModel("wd-v1-4-vit-tagger", "SmilingWolf/wd-v1-4-vit-tagger", "v1", True, None),
    TaggerModel("wd-v1-4-convnext-tagger", "SmilingWolf/wd-v1-4-convnext-tagger", "v1", True, None),
)}
DEFAULT_MODEL = "wd-swinv2-tagger-v3"


# ---------------------------------------------------------------- finding / downloading a model

def _is_model_dir(path: Path) -> bool:
    return (path / MODEL_FILE).is_file() and (path / LABELS_FILE).is_file()


def _repo_for(name: str) -> str | None:
    if name in MODELS:
        return MODELS[name].repo_id
    for model in MODELS.values():
        if model.repo_id == name:
            return name
    if name.count("/") == 1 and all(name.split("/")) and " " not in name:
        return name  # some other owner/repo with the same two files
    return None


def resolve_model(name_or_path, models_dir, *, revision: str | None = None,
                  force_download: bool = False) -> Path:
    """The folder holding model.onnx + selected_tags.csv for a name, a hub id or a local folder.

    - an existing folder with both files is used as it is;
    - a name from MODELS, or an 'owner/repo' hub id, is downloaded with
      ``huggingface_hub.hf_hub_download(repo_id, file, local_dir=<models_dir>/<owner>_<repo>)``
      (skipped when that folder already has both files, unless `force_download`);
      pass `revision` to pin a tagged revision (the v3 cards ask for it).
    Raises UserError naming the fix.
    """
    text = str(name_or_path).strip()
    if not text:
        raise UserError("No tagger model was chosen.", fix=f"Pick one, e.g. {DEFAULT_MODEL}.")
    path = Path(text).expanduser()
    if path.is_dir():
        if _is_model_dir(path):
            return path
        missing = [f for f in (MODEL_FILE, LABELS_FILE) if not (path / f).is_file()]
        raise UserError(f"The tagger folder lacks {' and '.join(missing)}.", path=path,
                        fix="A WD14 tagger folder needs model.onnx and selected_tags.csv from the "
                            "model's Hugging Face repository.")
    repo_id = _repo_for(text)
    if repo_id is None:
        raise UserError(f"'{text}' is neither a tagger folder nor a known tagger model.",
                        fix="Use one of: " + ", ".join(MODELS) + " (or a Hugging Face id like "
                            "SmilingWolf/wd-vit-tagger-v3, or a folder with model.onnx and selected_tags.csv).")
    target = Path(models_dir).expanduser() / repo_id.replace("/", "_")
    if _is_model_dir(target) and not force_download:
        return target
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError("Downloading a tagger needs the huggingface_hub package.",
                        fix="pip install huggingface_hub into the WebUI's Python, or download "
                            f"{MODEL_FILE} and {LABELS_FILE} from https://huggingface.co/{repo_id} "
                            f"into {target}.") from None
    target.mkdir(parents=True, exist_ok=True)
    got = {}
    for filename in (MODEL_FILE, LABELS_FILE):
        kwargs = {"local_dir": str(target)}
        if revision:
            kwargs["revision"] = revision
        if force_download:
            kwargs["force_download"] = True
        try:
            got[filename] = Path(hf_hub_download(repo_id, filename, **kwargs))
        except Exception as exc:  # network, 404, offline mode, disk full: all the user's to fix
            raise UserError(f"Could not download {filename} of {repo_id}: {type(exc).__name__}: {exc}",
                            path=target,
                            fix="Check the internet connection (and HF_HUB_OFFLINE), or download the "
                                f"files by hand from https://huggingface.co/{repo_id} into this folder.") from None
    folder = got[MODEL_FILE].parent
    if not _is_model_dir(folder):
        raise UserError(f"The download of {repo_id} did not leave both files in one folder.",
                        path=folder, fix="Delete the folder and download again.")
    return folder


# ---------------------------------------------------------------- labels and post-processing

@dataclass(frozen=True)
class Label:
    name: str       # as in the CSV (underscores)
    category: int


def load_labels(csv_path) -> list[Label]:
    """Rows of selected_tags.csv in order (parsed with csv: some names contain ',' or quotes)."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as fp:
            reader = csv.DictReader(fp)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if header[:3] != ["tag_id", "name", "category"]:
                raise UserError(f"Unexpected header {header!r} (expected tag_id,name,category,count).",
                                path=csv_path, fix="Use the selected_tags.csv that came with the model.")
            labels = []
            for n, row in enumerate(reader, 2):
                try:
                    labels.append(Label(row["name"], int(row["category"])))
                except (TypeError, ValueError):
                    raise UserError(f"Row {n} has no numeric category.", path=csv_path,
                                    fix="Use the selected_tags.csv that came with the model.") from None
    except OSError as exc:
        raise UserError(f"Cannot read the tag list ({exc.strerror or exc}).", path=csv_path,
                        fix="Download selected_tags.csv again.") from None
    except UnicodeDecodeError:
        raise UserError("The tag list is not UTF-8 text.", path=csv_path,
                        fix="Download selected_tags.csv again.") from None
    if not labels:
        raise UserError("The tag list is empty.", path=csv_path, fix="Download selected_tags.csv again.")
    return labels


def display_name(name: str, replace_underscores: bool = True, kaomoji: Iterable[str] = KAOMOJI) -> str:
    """'long_hair' -> 'long hair'; kaomoji such as '^_^' keep their underscore."""
    if not replace_underscores or name in set(kaomoji):
        return name
    return name.replace("_", " ")


def mcut_threshold(probs) -> float:
    """Maximum Cut threshold (Largeron et al. 2012), as in the SmilingWolf space.

    Sort descending, find the largest gap between neighbours, return its midpoint.
    Fewer than two values: 0.0 (keep whatever is above zero).
    """
    import numpy as np

    p = np.sort(np.asarray(probs, dtype=np.float64).ravel())[::-1]
    if p.size < 2:
        return 0.0
    gaps = p[:-1] - p[1:]
    t = int(np.argmax(gaps))
    return float((p[t] + p[t + 1]) / 2)


@dataclass
class TagOptions:
    general_threshold: float = 0.35      # kept when probability > threshold (the space's rule)
    character_threshold: float = 0.85
    use_mcut: bool = False               # MCut instead of the general threshold
    character_mcut: bool | None = None   # MCut for characters; None: same as use_mcut
    character_mcut_floor: float = 0.15   # the space floors the character MCut at 0.15
    include_rating: bool = False         # add the most probable rating tag to `tags`
    rating_position: str = "first"       # "first" | "last"
    undesired_tags: Sequence[str] = ()   # never output (either spelling: long_hair / long hair)
    replace_underscores: bool = True
    kaomoji: Sequence[str] = KAOMOJI
    character_first: bool = True
    order: str = "confidence"            # "confidence" (most probable first) | "model" (CSV order)


@dataclass
class TagResult:
    general: dict[str, float]     # kept general tags -> probability, in output order
    character: dict[str, float]   # kept character tags -> probability
    rating: dict[str, float]      # every rating -> probability
    tags: list[str]               # the caption's tags, in order

    @property
    def caption(self) -> str:
        return ", ".join(self.tags)


class _Postprocessor:
    """Vectorised post-processing for one label list (indices per category computed once)."""

    def __init__(self, labels: list[Label]):
        import numpy as np

        self.labels = labels
        cats = np.array([label.category for label in labels])
        self.general = np.flatnonzero(cats == CATEGORY_GENERAL)
        self.character = np.flatnonzero(cats == CATEGORY_CHARACTER)
        self.rating = np.flatnonzero(cats == CATEGORY_RATING)

    def __call__(self, probs, opts: TagOptions) -> TagResult:
        import numpy as np

        probs = np.asarray(probs, dtype=np.float32).ravel()
        name = lambda i: display_name(self.labels[i].name, opts.replace_underscores, opts.kaomoji)  # noqa: E731
        undesired = {_undesired_key(t, opts) for t in opts.undesired_tags}

        def keep(indices, threshold):
            p = probs[indices]
            chosen = indices[p > threshold]
            if opts.order == "confidence":
                chosen = chosen[np.argsort(-probs[chosen], kind="stable")]
            out: dict[str, float] = {}
            for i in chosen:
                n = name(i)
                if _undesired_key(n, opts) not in undesired and n not in out:
                    out[n] = float(probs[i])
            return out

        g_thr = mcut_threshold(probs[self.general]) if opts.use_mcut else opts.general_threshold
        char_mcut = opts.use_mcut if opts.character_mcut is None else opts.character_mcut
        c_thr = (max(opts.character_mcut_floor, mcut_threshold(probs[self.character]))
                 if char_mcut else opts.character_threshold)
        general = keep(self.general, g_thr)
        character = keep(self.character, c_thr)
        rating = {name(i): float(probs[i]) for i in self.rating}

        tags = list(character) + list(general) if opts.character_first else list(general) + list(character)
        if opts.include_rating and rating:
            top = max(rating, key=rating.get)
            if _undesired_key(top, opts) not in undesired:
                tags = [top] + tags if opts.rating_position == "first" else tags + [top]
        seen, ordered = set(), []
        for t in tags:  # a rating or character spelled like a general tag: keep it once
            if t not in seen:
                seen.add(t)
                ordered.append(t)
        return TagResult(general, character, rating, ordered)


def _undesired_key(tag: str, opts: TagOptions) -> str:
    tag = tag.strip()
    if tag in set(opts.kaomoji):
        return tag
    return normalise_tag(tag.replace("_", " "))


# ---------------------------------------------------------------- pre-processing

def _flatten(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (open_image does this for files)."""
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def prepare_image(image: Image.Image, size: int):
    """HWC float32 BGR 0-255 array: pad to a white centred square, resize to `size` (bicubic)."""
    import numpy as np

    image = _flatten(image)
    w, h = image.size
    side = max(w, h)
    if w != h:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    if side != size:
        bicubic = getattr(Image, "Resampling", Image).BICUBIC
        image = image.resize((size, size), bicubic)
    array = np.asarray(image, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------- the tagger

def choose_providers(requested=None, available: Sequence[str] = ()) -> list:
    """`requested` (names or (name, options) pairs; DEFAULT_PROVIDERS when None) that the
    onnxruntime build has, in the requested order, CPU always last as the fallback."""
    requested = list(DEFAULT_PROVIDERS if requested is None else requested)
    chosen = []
    for entry in requested:
        name = entry[0] if isinstance(entry, (tuple, list)) else entry
        if name in available and name not in [_provider_name(c) for c in chosen]:
            chosen.append(tuple(entry) if isinstance(entry, (tuple, list)) else entry)
    if CPU_PROVIDER not in [_provider_name(c) for c in chosen]:
        chosen.append(CPU_PROVIDER)
    return chosen


def _provider_name(entry) -> str:
    return entry[0] if isinstance(entry, (tuple, list)) else entry


def _short(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


class WD14Tagger:
    """One loaded WD14 / WD v3 ONNX model.

    providers: the onnxruntime execution providers to try, in order (names or
    (name, options) pairs, e.g. ("CUDAExecutionProvider", {"device_id": 1})); default CUDA,
    DirectML, CPU. Only those the installed onnxruntime build has are passed on.
    After loading: ``requested_providers``, ``available_providers``, ``providers`` (what the
    session really uses, first = the one running the model), ``provider`` and
    ``provider_note`` (None, or why the first requested provider is not in use).
    """

    def __init__(self, model_dir, providers=None, options: TagOptions | None = None,
                 session_options=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("The WD14 tagger needs onnxruntime.",
                            fix="pip install onnxruntime-gpu (NVIDIA) or onnxruntime (CPU) into the WebUI's "
                                "Python; never both, they overwrite each other.") from None
        self.model_dir = Path(model_dir)
        model_path = self.model_dir / MODEL_FILE
        if not model_path.is_file():
            raise UserError(f"{MODEL_FILE} is missing.", path=self.model_dir,
                            fix="Download the tagger again (see resolve_model).")
        self.labels = load_labels(self.model_dir / LABELS_FILE)
        self.options = options or TagOptions()

        self.available_providers = list(ort.get_available_providers())
        requested = list(DEFAULT_PROVIDERS if providers is None else providers)
        self.requested_providers = [_provider_name(p) for p in requested]
        chosen = choose_providers(requested, self.available_providers)
        self.chosen_providers = [_provider_name(p) for p in chosen]  # what the session was asked for
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.log_severity_level = 3  # we report the provider fallback ourselves
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=session_options,
                                                providers=chosen)
        except Exception as exc:
            raise UserError(f"onnxruntime cannot load the tagger model ({type(exc).__name__}: {exc}).",
                            path=model_path,
                            fix="Download the model again; v3 models need onnxruntime >= 1.17.") from None
        self.providers = list(self.session.get_providers())
        self.provider = self.providers[0] if self.providers else CPU_PROVIDER
        self.provider_note = self._provider_note()

        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] != 3:
            raise UserError(f"The model's input shape is {shape}; a WD14 tagger takes [batch, H, W, 3].",
                            path=model_path, fix="Use a SmilingWolf WD14 / WD v3 tagger model.")
        self.input_size = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else DEFAULT_IMAGE_SIZE
        # An int batch dimension is fixed (v2: 1); a name or None is dynamic (v3).
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        n_out = out.shape[-1] if out.shape else None
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise UserError(f"The model outputs {n_out} scores but selected_tags.csv lists "
                            f"{len(self.labels)} tags.", path=self.model_dir,
                            fix="model.onnx and selected_tags.csv must come from the same repository.")
        self._post = _Postprocessor(self.labels)

    # -- provider reporting
    def _provider_note(self) -> str | None:
        first = self.requested_providers[0] if self.requested_providers else CPU_PROVIDER
        if self.provider == first:
            return None
        tried = self.chosen_providers[0]
        if tried != self.provider:
            return (f"{_short(tried)} is installed but failed to load (usually a CUDA/cuDNN version or "
                    f"DLL path mismatch with this onnxruntime build); tagging runs on {_short(self.provider)}.")
        return (f"{_short(first)} was requested but this onnxruntime build does not have it "
                f"(installed providers: {', '.join(map(_short, self.available_providers))}); "
                f"tagging runs on {_short(self.provider)}. For NVIDIA GPUs install onnxruntime-gpu "
                "only (a later plain onnxruntime install overwrites it).")

    @property
    def batched(self) -> bool:
        """True when several images can go through one session.run."""
        return self.fixed_batch is None or self.fixed_batch > 1

    # -- pipeline pieces
    def prepare(self, image) -> "object":
        """A path or a PIL image -> the model's HWC array (decoding errors are UserErrors)."""
        if not isinstance(image, Image.Image):
            with _DECODE_LOCK:
                image = open_image(image)
        return prepare_image(image, self.input_size)

    def predict(self, arrays):
        """Probabilities [n, n_tags] for prepared arrays ([n, S, S, 3] or a list of [S, S, 3]).

        Dynamic batch: one run. Fixed batch b: runs of b images (the last one padded).
        """
        import numpy as np

        batch = np.stack(list(arrays)) if not hasattr(arrays, "ndim") else arrays
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        if self.fixed_batch is None:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        b = self.fixed_batch
        outs = []
        for start in range(0, n, b):
            chunk = batch[start:start + b]
            if chunk.shape[0] < b:
                pad = np.repeat(chunk[-1:], b - chunk.shape[0], axis=0)
                chunk = np.concatenate([chunk, pad])
            outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0])
        return np.concatenate(outs)[:n]

    def postprocess(self, probs, options: TagOptions | None = None) -> TagResult:
        return self._post(probs, options or self.options)

    def tag(self, images, options: TagOptions | None = None) -> list[TagResult]:
        """Tag paths / PIL images in memory (one batch). See caption_images for folders."""
        probs = self.predict([self.prepare(im) for im in images])
        return [self.postprocess(row, options) for row in probs]


# ---------------------------------------------------------------- writing caption files

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
            tmp = path.with_name("." + path.name + ".undo.tmp")
            tmp.write_bytes(change.previous)
            os.replace(tmp, path)
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
    the model (decodes one at a time, see _DECODE_LOCK). `should_stop()` is checked between
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
