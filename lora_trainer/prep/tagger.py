"""WD14 / WD v3 tagger (SmilingWolf ONNX models): the session, pre- and post-processing.

Runs outside the WebUI. Only Pillow is imported at module level; onnxruntime, numpy and
huggingface_hub are imported where they are used, so the tab loads without them.
Finding / downloading a model and its labels: tagger_models; writing caption files:
captioning (a WD14Tagger is a captioning.Captioner).

Model contract (shared/docs/dataset-prep.md §1, see tagger_models): input NHWC float32 [batch, S, S, 3], BGR, raw 0-255; output
[batch, n_tags] probabilities (the sigmoid is in the graph). v3 models have a dynamic batch
dimension, v2 models a fixed batch of 1: both are read from the session, never assumed.

onnxruntime does not fail when the CUDA provider cannot load (wrong CUDA/cuDNN): it runs on
CPU and only logs. `WD14Tagger` therefore reports the providers the session actually uses
(``providers`` / ``provider``) and explains a fallback in ``provider_note``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..dataset.images import _to_rgb, open_image
from ..errors import UserError
from .tagger_models import (CATEGORY_CHARACTER, CATEGORY_GENERAL, CATEGORY_RATING, CPU_PROVIDER, LABELS_FILE,
                            MODEL_FILE, Label, load_labels)
from .tags import normalise_tag

DEFAULT_IMAGE_SIZE = 448

# toriato's list (picobyte tagger/settings.py DEFAULT_KAMOJIS): names whose '_' is kept.
KAOMOJI = ("0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
           "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||")

CUDA_PROVIDER = "CUDAExecutionProvider"
DEFAULT_PROVIDERS = (CUDA_PROVIDER, "DmlExecutionProvider", CPU_PROVIDER)

# ---------------------------------------------------------------- post-processing

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

def prepare_image(image: Image.Image, size: int):
    """HWC float32 BGR 0-255 array: pad to a white centred square, resize to `size` (bicubic)."""
    import numpy as np

    image = _to_rgb(image)  # what open_image does for files: in-memory images look the same
    w, h = image.size
    side = max(w, h)
    if w != h:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    if side != size:
        bicubic = getattr(Image, "Resampling", Image).BICUBIC
        image = image.resize((size, size), bicubic)
    # RGB -> BGR on the uint8 view, then one conversion pass straight into a C-ordered array.
    return np.asarray(image)[:, :, ::-1].astype(np.float32, order="C")


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
            # Idle intra-op threads spin by default, burning the cores the image loaders of
            # caption_images need (measured: ~10 % slower captioning on 2 cores).
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
            image = open_image(image)   # thread-safe: decodes run in parallel with inference
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

    def infer(self, arrays, options: TagOptions | None = None) -> list[TagResult]:
        """One TagResult per prepared array (captioning.Captioner)."""
        return [self.postprocess(row, options) for row in self.predict(arrays)]

    def tag(self, images, options: TagOptions | None = None) -> list[TagResult]:
        """Tag paths / PIL images in memory (one batch). See caption_images for folders."""
        return self.infer([self.prepare(im) for im in images], options)
