"""The training loop through the TrainModel interface on a tiny torch model, and run_training's files."""
import json

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from lora_trainer.config import TrainConfig
from lora_trainer.dataset.scan import scan_dataset
from lora_trainer.errors import TrainingStopped, UserError
from lora_trainer.run import run_training
from lora_trainer.training.loop import Callbacks, train

from .fake_model import FakeModel


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data" / "5_sks square"
    folder.mkdir(parents=True)
    for i in range(3):
        im = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(im).rectangle([10 + 4 * i, 10, 40 + 4 * i, 40], fill=(220, 20, 20))
        im.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("sks square ||| red, white")
    return tmp_path / "data"


def config(dataset, **kw):
    base = dict(train_data_dir=str(dataset), resolution="64", min_bucket_reso=64, max_bucket_reso=128,
                network_dim=4, network_alpha=4, learning_rate=1e-2, max_train_steps=60, output_name="fake",
                network_train_unet_only=True)
    return TrainConfig.from_dict({**base, **kw})


def run(cfg, model=None, **cb):
    saved = []
    callbacks = Callbacks(save=lambda network, epoch, step, final, state: saved.append((epoch, step, final)) or "f",
                          **cb)
    result = train(cfg, model or FakeModel(), scan_dataset(cfg), callbacks)
    return result, saved


def test_loss_on_fixed_noise_falls_and_base_weights_stay(dataset):
    model = FakeModel()
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    result, saved = run(config(dataset), model)
    assert result.state == "finished" and result.steps == 60
    assert result.eval_loss_end < 0.8 * result.eval_loss_start
    assert saved == [(result.epoch, 60, True)]
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks for m in model.unet.modules())      # hooks removed
    assert all(p.grad is None for p in model.unet.parameters())


def test_same_seed_same_network(dataset):
    a, _ = run(config(dataset, max_train_steps=10))
    b, _ = run(config(dataset, max_train_steps=10))
    c, _ = run(config(dataset, max_train_steps=10, seed=7))
    sa, sb, sc = (r.network.kohya_state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_stop_and_save_ends_at_the_next_step_and_saves(dataset):
    steps = []
    result, saved = run(config(dataset, max_train_steps=1000),
                        progress=lambda **kw: steps.append(kw["step"]),
                        stop_requested=lambda: "save" if steps and steps[-1] >= 5 else None)
    assert result.state == "stopped" and result.steps == 5 and saved[-1][2] is True


def test_interrupt_aborts_without_saving(dataset):
    steps = []
    with pytest.raises(TrainingStopped):
        run(config(dataset), progress=lambda **kw: steps.append(kw["step"]),
            stop_requested=lambda: "abort" if steps and steps[-1] >= 3 else None)


def test_nan_loss_is_a_user_error_naming_the_fix(dataset):
    model = FakeModel()
    model.predict = lambda x, t, c: torch.full_like(x, float("nan"))
    with pytest.raises(UserError) as e:
        run(config(dataset), model)
    assert "nan" in e.value.message and "learning_rate" in e.value.fix


def test_save_every_n_epochs(dataset):
    result, saved = run(config(dataset, max_train_steps=None, max_train_epochs=3, save_every_n_epochs=1))
    assert [s[0] for s in saved] == [1, 2, 3] and [s[2] for s in saved] == [False, False, True]


def test_separator_never_reaches_the_text_encoder(dataset):
    model = FakeModel()
    seen = []
    encode = model.encode_captions
    model.encode_captions = lambda captions, sizes: seen.extend(captions) or encode(captions, sizes)
    run(config(dataset, max_train_steps=5), model)
    run(config(dataset, max_train_steps=5, shuffle_caption=True, keep_tokens=1), model)
    assert seen and all("|||" not in c for c in seen)
    assert all(c.startswith("sks square") for c in seen)


def test_captions_encoded_once_when_text_encoder_is_frozen(dataset):
    model = FakeModel()
    calls = []
    encode = model.encode_captions
    model.encode_captions = lambda captions, sizes: calls.append(1) or encode(captions, sizes)
    run(config(dataset, max_train_steps=30), model)
    assert len(calls) <= 3            # one caption text (+ the fixed-noise eval batch), not one per step


def test_run_training_writes_kohya_file_card_and_refuses_overwrite(dataset, tmp_path):
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    cfg = config(dataset, trigger_words="sks square", save_every_n_epochs=1, max_train_steps=None, max_train_epochs=2)
    files = []
    result = run_training(cfg, FakeModel(), str(lora_dir), lambda **kw: None, lambda: None, on_file=files.append)
    assert files == ["fake-000001.safetensors", "fake.safetensors"] and result.state == "finished"
    with safe_open(str(lora_dir / "fake.safetensors"), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["ss_output_name"] == "fake" and meta["ss_epoch"] == "2" and meta["ss_num_train_images"] == "15"
    assert json.loads(meta["ss_dataset_dirs"]) == {"5_sks square": {"n_repeats": 5, "img_count": 3}}
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q.lora_down.weight" in keys
    card = json.loads((lora_dir / "fake.json").read_text())
    assert card["activation text"] == "sks square"
    with pytest.raises(UserError) as e:
        run_training(cfg, FakeModel(), str(lora_dir), lambda **kw: None, lambda: None)
    assert "fake.safetensors" in e.value.text()


def test_prodigy_with_its_args_trains(dataset):
    pytest.importorskip("prodigyopt")
    cfg = config(dataset, optimizer_type="Prodigy", learning_rate=1.0, max_train_steps=40,
                 optimizer_args=["d_coef=2", "use_bias_correction=True", "safeguard_warmup=True", "weight_decay=0.01",
                                 "decouple=True", "betas=0.9,0.99"])
    result, _ = run(cfg)
    assert result.optimizer.startswith("prodigyopt.prodigy.Prodigy(") and "d_coef=2" in result.optimizer
    assert result.eval_loss_end < result.eval_loss_start


def test_prodigy_rejects_unknown_args_naming_the_key(dataset):
    pytest.importorskip("prodigyopt")
    with pytest.raises(UserError) as e:
        run(config(dataset, optimizer_type="Prodigy", learning_rate=1.0, optimizer_args=["warmup=3"]))
    assert e.value.key == "optimizer_args"


def test_progress_says_when_the_steps_are_done_and_the_run_evaluates_and_saves(dataset):
    phases = []
    run(config(dataset, max_train_steps=3), progress=lambda **kw: phases.append((kw["phase"], kw["step"])))
    after_steps = [p for p in phases if p[1] == 3]
    assert [p for p, _ in after_steps] == ["training", "evaluating", "saving"]
