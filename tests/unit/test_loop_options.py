"""Each loop option, proven inside the real loop (`training.loop.train`) by a hand computation.

The model records what the loop hands to `predict` (x_t, t, cond), what it returned and the
gradient the loss sends back into the prediction. From the recorded x_t and the clean latent
(encoded here by hand from the image file), the noise of that step is recovered:
    x_t = sqrt(a) * x0 + sqrt(1 - a) * noise   =>   noise = (x_t - sqrt(a) * x0) / sqrt(1 - a)
and the expected loss is written out below in plain torch (kohya sd-scripts / diffusers
formulas), independent of lora_trainer.training.loss and .noise, then compared with
TrainResult.losses. Only train()'s public behaviour is used (Callbacks, TrainResult, the
model interface), never the loop's internals.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from lora_trainer.config import TrainConfig
from lora_trainer.dataset.scan import scan_dataset
from lora_trainer.training.loop import Callbacks, train

from .fake_model import FakeModel

SIZE = 64          # images are exactly one bucket: no resize, no crop


class RecordingModel(FakeModel):
    """FakeModel that records every training prediction (grad enabled; the fixed-noise eval runs
    under no_grad and is not recorded)."""

    def __init__(self, prediction_type="epsilon", probe=False):
        super().__init__()
        self.prediction_type = prediction_type
        self.steps: list[dict] = []
        g = torch.Generator().manual_seed(123)
        self._probe = (torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]),
                       torch.randn(1, 3, 8, generator=g)) if probe else None

    def predict(self, x_t, t, cond):
        pred = super().predict(x_t, t, cond)
        if torch.is_grad_enabled():
            rec = {"x_t": x_t.detach().float().clone(), "t": t.detach().clone(),
                   "cond": cond.detach().float().clone(), "pred": pred.detach().float().clone()}
            if pred.requires_grad:
                pred.register_hook(lambda g, rec=rec: rec.__setitem__("grad", g.detach().float().clone()))
            if self._probe is not None:  # the UNet (with the attached LoRA) on a fixed input: shows weight updates
                with torch.no_grad():
                    rec["probe"] = self.unet(*self._probe).clone()
            self.steps.append(rec)
        return pred


# ---------------------------------------------------------------- data and hand references

def two_tone(path, left, right):
    """An image whose mirror is different (left half one colour, right half another)."""
    im = Image.new("RGB", (SIZE, SIZE), left)
    ImageDraw.Draw(im).rectangle([SIZE // 2, 0, SIZE - 1, SIZE - 1], fill=right)
    im.save(path)


def folder(root, name, images: dict):
    """images: {file stem: (left colour, right colour, caption or None)}."""
    d = root / name
    d.mkdir(parents=True)
    for stem, (left, right, caption) in images.items():
        two_tone(d / f"{stem}.png", left, right)
        if caption is not None:
            (d / f"{stem}.txt").write_text(caption, encoding="utf-8")
    return d


def hand_latent(model, path, flip=False):
    im = Image.open(path).convert("RGB")
    if flip:
        im = ImageOps.mirror(im)
    pixels = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        return model.encode_images(pixels[None])[0]


def hand_cond(model, caption):
    return model.encode_captions([caption], [(SIZE, SIZE)])[0]


def identify(model, rec, captions: dict):
    """Which caption each sample of a recorded batch was conditioned on (captions are unique here)."""
    names = []
    for row in rec["cond"]:
        hits = [name for name, text in captions.items() if torch.allclose(row, hand_cond(model, text), atol=1e-6)]
        assert len(hits) == 1, hits
        names.append(hits[0])
    return names


def alphas(model, t):
    return model.alphas_cumprod.double()[t].view(-1, 1, 1, 1)


def hand_noise(model, rec, x0):
    a = alphas(model, rec["t"])
    return (rec["x_t"].double() - a.sqrt() * x0.double()) / (1 - a).sqrt()


def hand_target(model, rec, x0, prediction_type):
    noise = hand_noise(model, rec, x0)
    if prediction_type == "v":          # diffusers DDPMScheduler.get_velocity
        a = alphas(model, rec["t"])
        return a.sqrt() * noise - (1 - a).sqrt() * x0.double()
    return noise


def hand_loss(model, rec, x0, prediction_type="epsilon", gamma=None, weights=None):
    """kohya train_network: per-sample MSE mean, x loss weight (prior_loss_weight for reg samples),
    x min-SNR weight (min(snr, gamma) / snr, or / (snr + 1) for v-prediction), then the batch mean."""
    target = hand_target(model, rec, x0, prediction_type)
    per_sample = ((rec["pred"].double() - target) ** 2).mean(dim=(1, 2, 3))
    if weights is not None:
        per_sample = per_sample * torch.tensor(weights, dtype=torch.float64)
    if gamma:
        a = alphas(model, rec["t"]).view(-1)
        snr = a / (1 - a)
        clipped = torch.clamp(snr, max=gamma)
        per_sample = per_sample * (clipped / (snr + 1) if prediction_type == "v" else clipped / snr)
    return float(per_sample.mean())


def config(data, **kw):
    base = dict(train_data_dir=str(data), resolution=str(SIZE), min_bucket_reso=64, max_bucket_reso=128,
                network_dim=4, network_alpha=4, learning_rate=1e-3, output_name="opt", network_train_unet_only=True,
                train_batch_size=1, max_train_steps=4, seed=3)
    return TrainConfig.from_dict({**base, **kw})


def run(cfg, model):
    steps = []
    cb = Callbacks(progress=lambda **kw: steps.append(kw["step"]) if kw.get("phase") == "training" else None,
                   save=lambda network, epoch, step, final, state: "f")
    result = train(cfg, model, scan_dataset(cfg), cb)
    assert len(model.steps) == len(result.losses), "one recorded training prediction per batch"
    return result, steps


def close(a, b, rel=1e-4):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


# ---------------------------------------------------------------- the options

@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
def test_target_is_the_noise_or_the_velocity(tmp_path, prediction_type):
    d = folder(tmp_path / "data", "1_sks", {"a": ("red", "white", None)})
    model = RecordingModel(prediction_type)
    result, _ = run(config(tmp_path / "data", max_train_steps=5), model)
    x0 = hand_latent(model, d / "a.png")
    other = "epsilon" if prediction_type == "v" else "v"
    for rec, loss in zip(model.steps, result.losses):
        assert close(loss, hand_loss(model, rec, x0, prediction_type)), (loss, hand_loss(model, rec, x0, prediction_type))
        assert not close(loss, hand_loss(model, rec, x0, other))     # the other target would be another loss


@pytest.mark.parametrize("prediction_type", ["epsilon", "v"])
def test_min_snr_gamma_weights_each_sample(tmp_path, prediction_type):
    captions = {"a": "sks one", "b": "sks two"}
    d = folder(tmp_path / "data", "3_sks", {"a": ("red", "white", captions["a"]),
                                            "b": ("blue", "yellow", captions["b"])})
    model = RecordingModel(prediction_type)
    gamma = 1.0
    result, _ = run(config(tmp_path / "data", train_batch_size=2, max_train_steps=6, min_snr_gamma=gamma), model)
    latents = {name: hand_latent(model, d / f"{name}.png") for name in captions}
    weighted_somewhere = False
    for rec, loss in zip(model.steps, result.losses):
        x0 = torch.stack([latents[name] for name in identify(model, rec, captions)])
        expected = hand_loss(model, rec, x0, prediction_type, gamma=gamma)
        assert close(loss, expected), (loss, expected)
        weighted_somewhere |= not close(loss, hand_loss(model, rec, x0, prediction_type))
    assert weighted_somewhere, "no step had a timestep where the min-SNR weight differs from 1"


def test_prior_loss_weight_multiplies_the_reg_samples(tmp_path):
    captions = {"train": "sks square", "reg_a": "square one", "reg_b": "square two"}
    d = folder(tmp_path / "data", "2_sks square", {"train": ("red", "white", captions["train"])})
    r = folder(tmp_path / "reg", "1_square", {"reg_a": ("blue", "white", captions["reg_a"]),
                                               "reg_b": ("green", "black", captions["reg_b"])})
    model = RecordingModel()
    weight = 0.3
    cfg = config(tmp_path / "data", reg_data_dir=str(tmp_path / "reg"), prior_loss_weight=weight,
                 train_batch_size=2, max_train_steps=4)
    result, _ = run(cfg, model)
    latents = {"train": hand_latent(model, d / "train.png"), "reg_a": hand_latent(model, r / "reg_a.png"),
               "reg_b": hand_latent(model, r / "reg_b.png")}
    mixed = 0
    for rec, loss in zip(model.steps, result.losses):
        names = identify(model, rec, captions)
        x0 = torch.stack([latents[n] for n in names])
        weights = [weight if n.startswith("reg") else 1.0 for n in names]
        assert close(loss, hand_loss(model, rec, x0, weights=weights)), names
        if any(n.startswith("reg") for n in names):
            mixed += 1
            assert not close(loss, hand_loss(model, rec, x0))        # unweighted would differ
    assert mixed, "no batch held a reg sample"


def test_flip_aug_trains_the_mirrored_latent_for_flipped_samples(tmp_path):
    d = folder(tmp_path / "data", "1_sks", {"a": ("black", "white", None)})
    model = RecordingModel()
    result, _ = run(config(tmp_path / "data", flip_aug=True, max_train_steps=10), model)
    plain, mirrored = hand_latent(model, d / "a.png"), hand_latent(model, d / "a.png", flip=True)
    assert not torch.allclose(plain, mirrored, atol=1e-3)
    used = []
    for rec, loss in zip(model.steps, result.losses):
        matches = [flip for flip, x0 in ((False, plain), (True, mirrored))
                   if close(loss, hand_loss(model, rec, x0[None]))]
        assert len(matches) == 1, "the loss is the loss of the image or of its mirror image, exactly one"
        used.append(matches[0])
    assert set(used) == {False, True}, used


def test_without_flip_aug_the_image_is_never_mirrored(tmp_path):
    d = folder(tmp_path / "data", "1_sks", {"a": ("black", "white", None)})
    model = RecordingModel()
    result, _ = run(config(tmp_path / "data", max_train_steps=6), model)
    plain = hand_latent(model, d / "a.png")
    assert all(close(loss, hand_loss(model, rec, plain[None])) for rec, loss in zip(model.steps, result.losses))


@pytest.mark.parametrize("offset", [None, 0.3])
def test_noise_offset_adds_a_per_channel_constant(tmp_path, offset):
    """kohya apply_noise_offset: noise + offset * randn(B, C, 1, 1), drawn after the noise and before
    the timesteps, all from one generator seeded with `seed`: re-sampled here by hand."""
    d = folder(tmp_path / "data", "1_sks", {"a": ("red", "white", None)})
    model = RecordingModel()
    cfg = config(tmp_path / "data", noise_offset=offset, train_batch_size=1, max_train_steps=4)
    run(cfg, model)
    x0 = hand_latent(model, d / "a.png")[None]
    g = torch.Generator().manual_seed(cfg.seed)
    for rec in model.steps:
        base = torch.randn(rec["x_t"].shape, generator=g)
        shift = torch.randn(rec["x_t"].shape[:2] + (1, 1), generator=g) if offset else None
        t = torch.randint(0, 1000, (rec["x_t"].shape[0],), generator=g)
        assert torch.equal(t, rec["t"].cpu()), "timesteps are drawn after the noise (and its offset)"
        noise = hand_noise(model, rec, x0).float()
        expected = base + offset * shift if offset else base
        torch.testing.assert_close(noise, expected, atol=2e-4, rtol=1e-4)
        if offset:   # the per-channel mean moves by offset * shift; plain noise would not match
            assert not torch.allclose(noise, base, atol=1e-2)
            torch.testing.assert_close(noise.mean(dim=(2, 3)) - base.mean(dim=(2, 3)), offset * shift[:, :, 0, 0],
                                       atol=2e-4, rtol=1e-4)


def test_gradient_accumulation_steps_every_n_batches_with_the_mean_gradient(tmp_path):
    d = folder(tmp_path / "data", "6_sks", {"a": ("red", "white", None)})
    n = 3
    model = RecordingModel(probe=True)
    result, progress = run(config(tmp_path / "data", gradient_accumulation_steps=n, max_train_steps=2), model)
    assert len(model.steps) == 6 and progress == [0, 0, 1, 1, 1, 2]
    probes = [rec["probe"] for rec in model.steps]
    # the weights change only after every n-th batch
    assert torch.equal(probes[0], probes[1]) and torch.equal(probes[1], probes[2])
    assert not torch.allclose(probes[2], probes[3])
    assert torch.equal(probes[3], probes[4]) and torch.equal(probes[4], probes[5])
    # each batch sends d(loss / n)/d(pred) back: the accumulated gradient is the mean over the n batches
    x0 = hand_latent(model, d / "a.png")[None]
    for rec in model.steps:
        target = hand_target(model, rec, x0, "epsilon")
        expected = 2 * (rec["pred"].double() - target) / rec["pred"].numel() / n
        torch.testing.assert_close(rec["grad"].double(), expected, atol=1e-9, rtol=1e-4)


def test_gradient_accumulation_matches_a_hand_run(tmp_path):
    """One optimizer step after n batches equals AdamW's first step on the mean of the n per-batch
    gradients, computed here batch by batch at the initial weights (LoRA up = 0, kohya's init)."""
    d = folder(tmp_path / "data", "3_sks", {"a": ("red", "white", None)})
    n, lr = 3, 1e-3
    model = RecordingModel()
    cfg = config(tmp_path / "data", gradient_accumulation_steps=n, max_train_steps=1, learning_rate=lr,
                 optimizer_args=["weight_decay=0"], max_grad_norm=0)
    result, progress = run(cfg, model)
    assert len(model.steps) == n and progress == [0] * (n - 1) + [1]
    network = result.network
    ups = {name: p for name, p in network.named_parameters() if name.endswith(".lora_up")}
    assert ups and len(ups) < len(list(network.parameters()))
    trained = {name: p.detach().clone() for name, p in ups.items()}
    # back to the start: up = 0; down did not move (its gradient is 0 while up is 0, and no weight decay)
    with torch.no_grad():
        for p in ups.values():
            p.zero_()
    x0 = hand_latent(model, d / "a.png")[None]
    per_batch = []
    with network.attached():
        for rec in model.steps:
            network.zero_grad(set_to_none=True)
            pred = model.unet(rec["x_t"], rec["t"], rec["cond"])
            target = hand_target(model, rec, x0, "epsilon").float()
            ((pred - target) ** 2).mean().backward()
            per_batch.append({name: p.grad.detach().clone() for name, p in ups.items()})
    for name, p in trained.items():
        g = sum(b[name] for b in per_batch) / n
        expected = -lr * g / (g.abs() + 1e-8)         # AdamW step 1: m_hat = g, v_hat = g^2
        torch.testing.assert_close(p, expected, atol=lr * 1e-3, rtol=0)
    # not the last batch's gradient alone
    last = {name: -lr * b / (b.abs() + 1e-8) for name, b in per_batch[-1].items()}
    assert any(not torch.allclose(trained[k], last[k], atol=lr * 1e-3) for k in trained)
