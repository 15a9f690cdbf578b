"""TrainConfig: kohya key names, validation that names the key and the fix, TOML round-trip."""
import pytest

from lora_trainer.config import TrainConfig, parse_optimizer_args
from lora_trainer.errors import ConfigError


def test_defaults_are_the_sd15_recipe():
    c = TrainConfig(train_data_dir="/x")
    assert (c.network_dim, c.network_alpha, c.learning_rate, c.lr_scheduler, c.max_train_epochs) == (32, 16.0, 1e-4, "cosine", 10)
    assert c.resolution_wh == (512, 512) and c.enable_bucket


def test_toml_round_trip_keeps_every_value():
    c = TrainConfig.from_dict({"train_data_dir": "/data/set", "network_type": "locon", "conv_dim": 8,
                               "optimizer_args": ["weight_decay=0.01", "betas=0.9,0.99"], "unet_lr": 5e-4,
                               "resolution": "512,768", "output_name": "my_lora", "trigger_words": 'a "quoted" word'})
    again = TrainConfig.from_toml(c.to_toml())
    assert again == c
    assert again.resolution_wh == (512, 768)


@pytest.mark.parametrize("body,key", [
    ({"train_data_dir": ""}, "train_data_dir"),
    ({"train_data_dir": "/x", "network_dim": "abc"}, "network_dim"),
    ({"train_data_dir": "/x", "networkdim": 4}, "networkdim"),
    ({"train_data_dir": "/x", "optimizer_type": "SGD"}, "optimizer_type"),
    ({"train_data_dir": "/x", "resolution": "huge"}, "resolution"),
    ({"train_data_dir": "/x", "min_bucket_reso": 250}, "min_bucket_reso"),
    ({"train_data_dir": "/x", "output_name": "../escape"}, "output_name"),
    ({"train_data_dir": "/x", "optimizer_type": "Prodigy", "learning_rate": 1.0, "text_encoder_lr": 0.5}, "text_encoder_lr"),
    ({"train_data_dir": "/x", "optimizer_args": ["nonsense"]}, "optimizer_args"),
    ({"train_data_dir": "/x", "network_train_unet_only": "maybe"}, "network_train_unet_only"),
])
def test_bad_values_name_the_key_and_the_fix(body, key):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(body)
    assert e.value.key == key and e.value.fix


def test_prodigy_with_one_lr_or_frozen_text_encoder_is_fine():
    TrainConfig.from_dict({"train_data_dir": "/x", "optimizer_type": "Prodigy", "learning_rate": 1.0})
    TrainConfig.from_dict({"train_data_dir": "/x", "optimizer_type": "Prodigy", "learning_rate": 1.0, "text_encoder_lr": 0})


def test_optimizer_args_parse_like_kohya():
    assert parse_optimizer_args(["d_coef=2", "betas=0.9,0.99", "decouple=True", "weight_decay=0.01", "x=None"]) == {
        "d_coef": 2, "betas": (0.9, 0.99), "decouple": True, "weight_decay": 0.01, "x": None}
