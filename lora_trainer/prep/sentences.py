"""Natural-language captions (BLIP, GIT) through the transformers 4.30.2 classes.

Facts: shared/docs/dataset-prep.md §2. BLIP: BlipForConditionalGeneration + BlipProcessor
(optional conditional prefix, echoed at the start of the caption); GIT: GitForCausalLM +
AutoProcessor (GitProcessor). Newer captioners (Kosmos-2, Florence-2, InstructBLIP) need a newer
transformers than the WebUI pins, so they are not offered.

Only Pillow is imported at module level; torch, transformers and huggingface_hub are imported
where they are used. Writing caption files: captioning.caption_images_with_sentences (a
SentenceCaptioner is a captioning.Captioner).
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..dataset.images import _to_rgb, open_image
from ..errors import UserError

CONFIG_FILE = "config.json"
SUPPORTED_TYPES = ("blip", "git")  # config.json model_type


@dataclass(frozen=True)
class CaptionerModel:
    name: str
    repo_id: str
    model_type: str   # "blip" | "git"


MODELS: dict[str, CaptionerModel] = {m.name: m for m in (
    CaptionerModel("BLIP base", "Salesforce/blip-image-captioning-base", "blip"),
    CaptionerModel("BLIP large", "Salesforce/blip-image-captioning-large", "blip"),
    CaptionerModel("GIT base", "microsoft/git-base-coco", "git"),
    CaptionerModel("GIT large", "microsoft/git-large-coco", "git"),
    CaptionerModel("GIT large TextCaps", "microsoft/git-large-textcaps", "git"),  # kohya's default
)}
DEFAULT_MODEL = "BLIP large"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16",
           "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "float": "float32"}


# ---------------------------------------------------------------- finding / downloading a model

def _repo_for(name: str) -> str | None:
    for model in MODELS.values():
        if name.lower() in (model.name.lower(), model.repo_id.lower()):
            return model.repo_id
    return name if _HUB_ID.match(name) else None  # some other BLIP/GIT repository


def model_folder(repo_id: str, models_dir) -> Path:
    """Where a hub model is kept: <models_dir>/<owner>--<repo> (the hub cache's own spelling)."""
    return Path(models_dir).expanduser() / repo_id.replace("/", "--")


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _is_complete(folder: Path) -> bool:
    """A finished download: an interrupted one may have config.json but no weights yet."""
    return ((folder / CONFIG_FILE).is_file() and (folder / "preprocessor_config.json").is_file()
            and _has_weights(folder))


def _allow_patterns(repo_id: str, revision: str | None) -> list[str]:
    """Config, tokenizer and one copy of the weights: the repos also carry TF/duplicate weights."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo_id, revision=revision)
    weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["pytorch_model*.bin"]
    return ["*.json", "*.txt", "*.model"] + weights


def resolve_captioner(name_or_path, models_dir, *, download: bool = True, revision: str | None = None,
                      force_download: bool = False) -> Path:
    """The local folder of a captioner given a name from MODELS, a hub id or a folder.

    - an existing folder with config.json is used as it is;
    - a known name or an 'owner/repo' id lives in ``model_folder(repo_id, models_dir)`` and is
      fetched there with ``huggingface_hub.snapshot_download`` when incomplete (or
      `force_download`); with ``download=False`` a missing model is a UserError instead.
    """
    text = str(name_or_path or "").strip()
    if not text:
        raise UserError("No captioner model was chosen.", fix=f"Pick one, e.g. {DEFAULT_MODEL}.")
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return path
        raise UserError("The captioner folder has no config.json.", path=path,
                        fix="Use the folder of a BLIP or GIT checkpoint (config.json, weights, "
                            "preprocessor_config.json and the tokenizer files).")
    repo_id = _repo_for(text)
    if repo_id is None:
        raise UserError(f"'{text}' is neither a captioner folder nor a known captioner model.",
                        fix="Use one of: " + ", ".join(MODELS) + " (or a Hugging Face id like "
                            "Salesforce/blip-image-captioning-base, or a folder with the model's files).")
    target = model_folder(repo_id, models_dir)
    if _is_complete(target) and not force_download:
        return target
    if not download:
        raise UserError(f"The captioner {repo_id} is not downloaded.", path=target,
                        fix=f"Download it (allow downloads), or put the files of https://huggingface.co/{repo_id} "
                            "into this folder.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError("Downloading a captioner needs the huggingface_hub package.", path=target,
                        fix="pip install huggingface_hub into the WebUI's Python, or download the files of "
                            f"https://huggingface.co/{repo_id} into this folder.") from None
    target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo_id, revision=revision, local_dir=str(target), force_download=force_download,
                          allow_patterns=_allow_patterns(repo_id, revision))
    except Exception as exc:  # network, 404, offline mode, disk full: all the user's to fix
        raise UserError(f"Could not download {repo_id}: {type(exc).__name__}: {exc}", path=target,
                        fix="Check the internet connection (and HF_HUB_OFFLINE), or download the files by "
                            f"hand from https://huggingface.co/{repo_id} into this folder.") from None
    if not _is_complete(target):
        raise UserError(f"The download of {repo_id} has no config.json, preprocessor_config.json or weights.",
                        path=target, fix="Check that the repository is a BLIP or GIT captioner; delete the "
                                         "folder and download again.")
    return target


def read_model_type(model_dir) -> str:
    """config.json's model_type, checked against SUPPORTED_TYPES."""
    folder = Path(model_dir)
    config = folder / CONFIG_FILE
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("The captioner folder has no config.json.", path=folder,
                        fix="Download the model again (see resolve_captioner).") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"config.json cannot be read ({exc}).", path=config,
                        fix="Download the model again (delete the folder first).") from None
    model_type = str(data.get("model_type") or "") if isinstance(data, dict) else ""
    if model_type not in SUPPORTED_TYPES:
        raise UserError(f"The model is of type {model_type or 'unknown'!r}; natural-language captions "
                        "run BLIP and GIT models only.", path=folder,
                        fix="Use one of: " + ", ".join(MODELS) + " (BLIP-2, Kosmos-2 and Florence-2 are not "
                            "supported with the WebUI's transformers).")
    return model_type


# ---------------------------------------------------------------- device and precision

def _import_torch():
    try:
        import torch
    except ImportError:
        raise UserError("Natural-language captions need torch.",
                        fix="Run inside the WebUI's Python (it has torch).") from None
    return torch


def choose_device(device, torch) -> tuple[str, str | None]:
    """(torch device, note): "auto" is CUDA when torch sees a GPU, else the CPU."""
    wanted = str(device or "auto").strip().lower()
    cuda = torch.cuda.is_available()
    if wanted == "auto":
        return ("cuda", None) if cuda else ("cpu", "torch sees no CUDA GPU; captions run on the CPU (slow).")
    if wanted == "cpu":
        return "cpu", None
    if wanted.startswith("cuda"):
        if not cuda:
            raise UserError(f"Device {device!r} was asked for but torch sees no CUDA GPU.",
                            fix="Use device 'auto' or 'cpu' (or a CUDA build of torch).")
        return wanted, None
    raise UserError(f"Unknown device {device!r}.", fix="Use 'auto', 'cpu' or 'cuda'.")


def choose_dtype(dtype, device: str, torch):
    """(torch dtype, note): fp16 on CUDA by default; always fp32 on the CPU for fp16 (too slow
    / unsupported ops there)."""
    on_cuda = device.startswith("cuda")
    if dtype is None:
        return (torch.float16 if on_cuda else torch.float32), None
    if isinstance(dtype, str):
        name = _DTYPES.get(dtype.strip().lower())
        if name is None:
            raise UserError(f"Unknown precision {dtype!r}.", fix="Use fp16, bf16 or fp32.")
        dtype = getattr(torch, name)
    if dtype == torch.float16 and not on_cuda:
        return torch.float32, "float16 is used on CUDA only; the CPU runs float32."
    return dtype, None


# ---------------------------------------------------------------- the captioner

def _load(model_type: str, folder: Path, dtype):
    """(processor, model) from a local folder only: never a download behind the user's back."""
    try:
        if model_type == "blip":
            from transformers import BlipForConditionalGeneration as model_class
            from transformers import BlipProcessor as processor_class
        else:
            from transformers import AutoProcessor as processor_class
            from transformers import GitForCausalLM as model_class
    except ImportError as exc:
        raise UserError(f"This transformers cannot run {model_type.upper()} captioners ({exc}).",
                        fix="Use the WebUI's transformers (4.30.2; BLIP and GIT need >= 4.26).") from None
    kwargs = {"local_files_only": True, "torch_dtype": dtype}
    if any(folder.glob("*.safetensors")):
        kwargs["use_safetensors"] = True  # no pickle when a safetensors copy is there
    try:
        processor = processor_class.from_pretrained(str(folder), local_files_only=True)
        model = model_class.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # missing/corrupt files surface as OSError, ValueError, KeyError...
        raise UserError(f"transformers cannot load the captioner ({type(exc).__name__}: {exc}).", path=folder,
                        fix="Download the model again (delete the folder first); it needs config.json, the "
                            "weights, preprocessor_config.json and the tokenizer files.") from None
    return processor, model


class SentenceCaptioner:
    """One loaded BLIP or GIT captioner.

    device: "auto" (CUDA if available), "cpu" or "cuda[:n]"; dtype: None (fp16 on CUDA, fp32 on
    CPU), "fp16"/"bf16"/"fp32" or a torch dtype. max_length / min_length (tokens, the prompt
    included) and num_beams go to generate() (greedy by default: deterministic).
    prompt: a text prefix the caption continues (BLIP's conditional captioning, e.g.
    "a photography of"; GIT continues it too). The model echoes it; strip_prompt removes it.
    After loading: ``device`` (what runs the model), ``device_note``, ``dtype``, ``model_type``.
    Use as a context manager (or call unload()) to free the model.
    """

    def __init__(self, model_dir, device: str = "auto", dtype=None, max_length: int = 50,
                 num_beams: int = 1, prompt: str | None = None, *, min_length: int = 5,
                 strip_prompt: bool = False):
        torch = _import_torch()
        self.model_dir = Path(model_dir)
        self.model_type = read_model_type(self.model_dir)
        self.device, device_note = choose_device(device, torch)
        self.dtype, dtype_note = choose_dtype(dtype, self.device, torch)
        self.device_note = " ".join(n for n in (device_note, dtype_note) if n) or None
        self.max_length, self.min_length, self.num_beams = int(max_length), int(min_length), int(num_beams)
        self.prompt = " ".join(str(prompt or "").split()) or None
        self.strip_prompt = strip_prompt
        self.processor, model = _load(self.model_type, self.model_dir, self.dtype)
        self.model = model.to(self.device).eval()
        self._prompt_ids, self._echo = self._encode_prompt()

    def _encode_prompt(self) -> tuple[list[int] | None, str]:
        if not self.prompt:
            return None, ""
        tok = self.processor.tokenizer
        bare = tok(self.prompt, add_special_tokens=False).input_ids
        # How the prompt reads back after decoding (the BERT tokenizers lower-case it).
        echo = " ".join(tok.decode(bare, skip_special_tokens=True).split())
        if self.model_type == "blip":
            # [CLS] prompt [SEP]: BLIP's generate turns the first into its BOS and drops the last.
            return list(tok(self.prompt).input_ids), echo
        return [tok.cls_token_id] + list(bare), echo  # GIT: BOS ([CLS]) + prompt, as in its docs

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def _require_loaded(self) -> None:
        if self.model is None:
            raise UserError("The captioner was unloaded.", fix="Load it again (a new SentenceCaptioner).")

    # -- pipeline pieces (captioning.Captioner; captioning._run_batches calls prepare in worker threads)
    @property
    def provider(self) -> str:
        """The torch device running the model (captioning.Captioner)."""
        return self.device

    @property
    def provider_note(self) -> str | None:
        return self.device_note

    def prepare(self, image):
        """A path or a PIL image -> pixel_values [1, 3, H, W] float32 (decoding errors are UserErrors)."""
        self._require_loaded()
        if not isinstance(image, Image.Image):
            image = open_image(image)
        else:
            image = _to_rgb(image)
        return self.processor.image_processor(image, return_tensors="pt")["pixel_values"]

    def generate(self, pixels: Sequence) -> list[str]:
        """Captions for prepared pixel_values (a list of [1, 3, H, W] or one [n, 3, H, W])."""
        self._require_loaded()
        torch = _import_torch()
        pixels = list(pixels) if not hasattr(pixels, "ndim") else [pixels]
        if not pixels:
            return []
        batch = torch.cat(pixels).to(self.device, self.dtype)
        n = batch.shape[0]
        kwargs = {"max_length": self.max_length, "min_length": self.min_length, "num_beams": self.num_beams}
        if self._prompt_ids:
            kwargs["input_ids"] = torch.tensor([self._prompt_ids] * n, dtype=torch.long, device=self.device)
        try:
            with torch.inference_mode():
                out = self.model.generate(pixel_values=batch, **kwargs)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise UserError(f"The GPU ran out of memory captioning {n} images at once.",
                            fix="Lower the batch size, use a base model, or caption on the CPU.") from None
        return [self._clean(t) for t in self.processor.batch_decode(out, skip_special_tokens=True)]

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        if self.strip_prompt and self._echo:
            head, rest = text[:len(self._echo)], text[len(self._echo):]
            if head.lower() == self._echo.lower() and (not rest or not rest[0].isalnum()):
                text = rest.lstrip(" ,:;-")
        return text

    def infer(self, pixels: Sequence) -> list[str]:
        """One caption per prepared input (captioning.Captioner): generate."""
        return self.generate(pixels)

    def caption(self, images: Sequence) -> list[str]:
        """Captions for paths / PIL images in memory (one batch). See
        caption_images_with_sentences for writing caption files."""
        return self.generate([self.prepare(im) for im in images])

    # -- freeing
    def unload(self) -> None:
        """Drop the model and processor and give the memory back (CUDA cache included)."""
        if self.model is None:
            return
        self.model = None
        self.processor = None
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def __enter__(self) -> SentenceCaptioner:
        return self

    def __exit__(self, *exc) -> None:
        self.unload()
