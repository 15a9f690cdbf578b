"""WD14 / WD v3 tagger models: the known list, finding or downloading one, its label CSV.

Model contract (shared/docs/dataset-prep.md §1): a folder with ``model.onnx`` and
``selected_tags.csv`` (tag_id,name,category,count; row i is output i; category 0 general,
4 character, 9 rating). huggingface_hub is imported only when a download is needed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

MODEL_FILE = "model.onnx"
LABELS_FILE = "selected_tags.csv"

CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4
CATEGORY_RATING = 9

# onnxruntime's always-present provider: named here so captioning need not import tagger.
CPU_PROVIDER = "CPUExecutionProvider"


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


# ---------------------------------------------------------------- labels

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
