"""LR schedules against the formulas kohya uses (transformers/diffusers get_*_schedule_with_warmup).

kohya's get_scheduler_fix hands constant_with_warmup and cosine to transformers'
get_constant_schedule_with_warmup / get_cosine_schedule_with_warmup (num_cycles 0.5), which are
the same as diffusers'. Their lr_lambda, written out here as the reference:
    warmup:  current_step / max(1, num_warmup_steps)          while current_step < num_warmup_steps
    cosine:  progress = (step - warmup) / max(1, total - warmup)
             max(0, 0.5 * (1 + cos(pi * num_cycles * 2 * progress)))
So the multiplier is 0 at step 0 and exactly 1.0 at step == warmup.
"""
import math

import pytest
import torch

from lora_trainer.config import TrainConfig
from lora_trainer.training.schedulers import lr_multiplier, make_scheduler, warmup_steps


def diffusers_constant_with_warmup(step, warmup):
    if step < warmup:
        return float(step) / float(max(1.0, warmup))
    return 1.0


def diffusers_cosine(step, warmup, total, num_cycles=0.5):
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def test_warmup_starts_at_zero_and_reaches_one_at_the_warmup_step():
    # literal values of the diffusers/transformers schedules
    assert lr_multiplier("constant_with_warmup", 0, 100, 10) == 0.0
    assert lr_multiplier("constant_with_warmup", 1, 100, 10) == pytest.approx(0.1)
    assert lr_multiplier("constant_with_warmup", 9, 100, 10) == pytest.approx(0.9)
    assert lr_multiplier("constant_with_warmup", 10, 100, 10) == 1.0
    assert lr_multiplier("cosine", 0, 110, 10) == 0.0
    assert lr_multiplier("cosine", 5, 110, 10) == pytest.approx(0.5)
    assert lr_multiplier("cosine", 10, 110, 10) == 1.0
    assert lr_multiplier("cosine", 35, 110, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier("cosine", 60, 110, 10) == pytest.approx(0.5)
    assert lr_multiplier("cosine", 110, 110, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier("constant", 0, 100, 10) == 1.0


@pytest.mark.parametrize("total, warmup", [(100, 10), (7, 3), (50, 0), (5, 1), (30, 29)])
def test_every_step_matches_the_diffusers_formulas(total, warmup):
    for step in range(total + 1):
        assert lr_multiplier("constant_with_warmup", step, total, warmup) == \
            pytest.approx(diffusers_constant_with_warmup(step, warmup), abs=1e-12), step
        assert lr_multiplier("cosine", step, total, warmup) == \
            pytest.approx(diffusers_cosine(step, warmup, total), abs=1e-12), step
        assert lr_multiplier("constant", step, total, warmup) == 1.0


def test_warmup_ratio_is_a_share_of_the_total_steps_like_kohya():
    # kohya: int(lr_warmup_steps * num_training_steps) when lr_warmup_steps is a float ratio
    assert warmup_steps(TrainConfig(lr_warmup_steps=0.1), 95) == 9
    assert warmup_steps(TrainConfig(lr_warmup_steps=25), 95) == 25
    assert warmup_steps(TrainConfig(lr_warmup_steps=0), 95) == 0


@pytest.mark.parametrize("name", ["constant_with_warmup", "cosine"])
def test_the_optimizer_sees_the_scheduled_lr_at_each_step(name):
    lr, total, warmup = 0.5, 12, 4
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make_scheduler(opt, TrainConfig(lr_scheduler=name, lr_warmup_steps=warmup), total)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    reference = diffusers_constant_with_warmup if name == "constant_with_warmup" else \
        (lambda s, w: diffusers_cosine(s, w, total))
    assert seen == pytest.approx([lr * reference(s, warmup) for s in range(total)], abs=1e-12)
    assert seen[0] == 0.0 and seen[warmup] == lr


def test_the_first_training_step_applies_lr_zero_under_warmup(tmp_path):
    """Inside the loop: with warmup the first optimizer step runs at LR 0 (kohya/diffusers), so the
    zero-initialised LoRA up weights are still zero after it; without warmup they have moved."""
    from PIL import Image

    from lora_trainer.dataset.scan import scan_dataset
    from lora_trainer.training.loop import Callbacks, train

    from .fake_model import FakeModel

    data = tmp_path / "data"
    (data / "1_sks").mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(data / "1_sks" / "a.png")

    def ups_after_one_step(**kw):
        cfg = TrainConfig.from_dict(dict(train_data_dir=str(data), resolution="64", min_bucket_reso=64,
                                         max_bucket_reso=128, network_dim=4, network_alpha=4, learning_rate=1e-2,
                                         max_train_steps=1, network_train_unet_only=True, **kw))
        result = train(cfg, FakeModel(), scan_dataset(cfg), Callbacks(save=lambda *a, **k: "f"))
        return [p for name, p in result.network.named_parameters() if name.endswith(".lora_up")]

    warm = ups_after_one_step(lr_scheduler="constant_with_warmup", lr_warmup_steps=2)
    assert warm and all(not p.detach().any() for p in warm)
    cos = ups_after_one_step(lr_scheduler="cosine", lr_warmup_steps=3)
    assert all(not p.detach().any() for p in cos)
    plain = ups_after_one_step(lr_scheduler="constant_with_warmup", lr_warmup_steps=0)
    assert any(p.detach().any() for p in plain)
