"""The dataset keys of the saved file as kohya sd-scripts computes them (train_network.py + train_util).

Facts from kohya (train_network.py, library/train_util.py DreamBoothDataset / BaseDataset):
- ss_num_batches_per_epoch = len(train_dataloader): the dataset yields one item per bucket batch,
  so it is the sum over buckets of ceil(samples in the bucket / batch size), reg samples included;
  gradient accumulation does not enter it.
- ss_num_reg_images = num_reg_images, counted BEFORE the reg images are balanced to the train
  samples: num_repeats * number of images, summed over the reg folders.
- ss_tag_frequency: set_tag_frequency is called for every folder, reg folders included, keyed by the
  folder's basename (a reg folder with a train folder's name adds to its counts).
- ss_bucket_info.mean_img_ar_error: mean |AR error| over the images registered for training (train
  images and the reg images used), without repeats.
The expected values below are worked out by hand from those rules.
"""
import json

import pytest
from PIL import Image
from safetensors import safe_open

from lora_trainer.config import TrainConfig
from lora_trainer.dataset.scan import scan_dataset
from lora_trainer.run import run_training

from .fake_model import FakeModel


def image(path, size, caption=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 40)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def make_data(root):
    train, reg = root / "train" / "3_sks dog", root / "reg" / "1_dog"
    for i in range(3):
        image(train / f"sq{i}.png", (128, 128), "sks dog, Red")      # bucket 128x128, AR error 0
    for i in range(2):
        image(train / f"wide{i}.png", (200, 64), "sks dog, wide")   # bucket 192x64, |3 - 200/64| = 0.125
    for i in range(4):
        image(reg / f"r{i}.png", (130, 128), "dog, photo")          # bucket 128x128, |1 - 130/128| = 0.015625
    return root


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


def cfg(data, **kw):
    return TrainConfig.from_dict({
        "train_data_dir": str(data / "train"), "reg_data_dir": str(data / "reg"), "resolution": "128",
        "min_bucket_reso": 64, "max_bucket_reso": 256, "bucket_reso_steps": 64, "enable_bucket": True,
        "train_batch_size": 5, "gradient_accumulation_steps": 2, "max_train_steps": 2, "network_dim": 2,
        "network_alpha": 1, "output_name": "meta", "network_train_unet_only": True, **kw})


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    """The metadata of one real run_training file (trained once for all tests below)."""
    root = make_data(tmp_path_factory.mktemp("run"))
    lora_dir = root / "Lora"
    lora_dir.mkdir()
    run_training(cfg(root), FakeModel(), str(lora_dir), lambda **kw: None, lambda: None)
    with safe_open(str(lora_dir / "meta.safetensors"), "pt") as f:
        return f.metadata()


# train: 5 images x 3 = 15 samples; reg: 4 images x 1 = 4, balanced to 15 (repeats 4, 4, 4, 3)

def test_num_batches_per_epoch_is_the_length_of_kohyas_dataloader(meta):
    # buckets: 128x128 holds 9 train + 15 reg = 24 samples -> ceil(24/5) = 5 batches; 192x64 holds 6 -> 2
    assert meta["ss_num_batches_per_epoch"] == "7"
    assert meta["ss_total_batch_size"] == "10" and meta["ss_num_epochs"] == "1"   # ceil(7/2) = 4 steps/epoch
    assert meta["ss_num_train_images"] == "15"


def test_num_reg_images_is_counted_before_balancing(meta):
    assert meta["ss_num_reg_images"] == "4"


def test_tag_frequency_includes_the_reg_folders(meta):
    assert json.loads(meta["ss_tag_frequency"]) == {
        "3_sks dog": {"sks dog": 5, "red": 3, "wide": 2},
        "1_dog": {"dog": 4, "photo": 4},
    }
    assert json.loads(meta["ss_dataset_dirs"]) == {"3_sks dog": {"n_repeats": 3, "img_count": 5}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_dog": {"n_repeats": 1, "img_count": 4}}


def test_bucket_info_counts_reg_samples_and_their_aspect_error(meta):
    bucket_info = json.loads(meta["ss_bucket_info"])
    assert bucket_info["buckets"] == {"0": {"resolution": [128, 128], "count": 24},
                                      "1": {"resolution": [192, 64], "count": 6}}
    # (3 * 0 + 2 * 0.125 + 4 * 0.015625) / 9 images
    assert bucket_info["mean_img_ar_error"] == pytest.approx((2 * 0.125 + 4 * 0.015625) / 9)


def test_scan_counts_reg_images_before_balancing_and_samples_after(data):
    scan = scan_dataset(cfg(data))
    assert scan.num_reg_images == 4                    # kohya's num_reg_images
    assert scan.reg_samples_per_epoch == 15            # what is trained per epoch
    assert scan.batches_per_epoch == 7 and scan.steps_per_epoch == 4
    summary = scan.summary()
    assert summary["num_reg_images"] == 4 and summary["reg_samples_per_epoch"] == 15


def test_surplus_reg_images_still_count_in_num_reg_images(tmp_path):
    image(tmp_path / "train" / "1_sks" / "a.png", (128, 128))
    for i in range(5):
        image(tmp_path / "reg" / "2_person" / f"r{i}.png", (128, 128))
    scan = scan_dataset(cfg(tmp_path))
    assert scan.num_reg_images == 10                   # 5 images x 2 repeats, as kohya logs and saves it
    # kohya registers the first reg image with its own 2 repeats (n = 2 >= 1 train sample), then stops
    assert scan.reg_samples_per_epoch == 2 and scan.num_train_images == 1


def test_reg_folder_with_a_train_folders_name_adds_to_its_tag_counts(tmp_path):
    image(tmp_path / "train" / "1_dog" / "a.png", (128, 128), "dog, grass")
    image(tmp_path / "reg" / "1_dog" / "r.png", (128, 128), "dog, sofa")
    scan = scan_dataset(cfg(tmp_path))
    assert scan.tag_frequency == {"1_dog": {"dog": 2, "grass": 1, "sofa": 1}}


# ---------------------------------------------------------------- against a real kohya run

# the keys a run derives from its dataset and settings (the rest is checked in test_output.py)
RUN_KEYS = ["ss_num_train_images", "ss_num_reg_images", "ss_num_batches_per_epoch", "ss_num_epochs",
            "ss_max_train_steps", "ss_steps", "ss_epoch", "ss_dataset_dirs", "ss_reg_dataset_dirs",
            "ss_tag_frequency", "ss_bucket_info", "ss_resolution", "ss_enable_bucket", "ss_min_bucket_reso",
            "ss_max_bucket_reso", "ss_batch_size_per_device", "ss_total_batch_size",
            "ss_gradient_accumulation_steps", "ss_prior_loss_weight", "ss_learning_rate", "ss_seed",
            "ss_lr_scheduler", "ss_lr_warmup_steps", "ss_output_name", "ss_cache_latents", "ss_flip_aug",
            "ss_shuffle_caption", "ss_keep_tokens", "ss_network_dim", "ss_network_alpha", "ss_mixed_precision",
            "modelspec.resolution", "modelspec.title"]


def test_a_run_on_kohyas_fixture_dataset_writes_kohyas_values(tmp_path):
    """The kohya fixture run (sd15_lora_te_unet.args.txt): 8 images at 256x256 in `10_sks shape` with .txt
    captions, batch 1, no buckets, max_train_steps 1. The same dataset and settings through our scan,
    loop and run_training give the values kohya wrote."""
    from .kohya_fixtures import kohya_fixture

    ref = json.loads(kohya_fixture("sd15_lora_te_unet.metadata.json").read_text(encoding="utf-8"))
    tags = json.loads(ref["ss_tag_frequency"])["10_sks shape"]
    sentences = [tag for tag, count in tags.items() if count == 1]
    assert tags["sks shape"] == 8 and len(sentences) == 8
    for i, sentence in enumerate(sentences):
        image(tmp_path / "train" / "10_sks shape" / f"{i}.png", (256, 256), f"sks shape, {sentence}")
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    config = TrainConfig.from_dict({
        "train_data_dir": str(tmp_path / "train"), "caption_extension": ".txt", "train_batch_size": 1,
        "learning_rate": 1e-4, "lr_scheduler": "constant", "optimizer_type": "AdamW", "mixed_precision": "no", "output_name": "sd15_lora_te_unet",
        "seed": 1, "network_dim": 2, "network_alpha": 1, "resolution": "256", "enable_bucket": False,
        "max_train_steps": 1, "network_train_unet_only": True})
    run_training(config, FakeModel(), str(lora_dir), lambda **kw: None, lambda: None)
    with safe_open(str(lora_dir / "sd15_lora_te_unet.safetensors"), "pt") as f:
        ours = f.metadata()
    for key in RUN_KEYS:
        if ref[key].startswith(("{", "[")) or ref[key] == "null":
            assert json.loads(ours[key]) == json.loads(ref[key]), key
        else:
            assert ours[key] == ref[key], (key, ours[key], ref[key])
