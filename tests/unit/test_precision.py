"""mixed_precision / full_bf16 / full_fp16 on this torch, the CUDA path against fake parts,
fused AdamW by feature detection, and the per-caption conditioning cache."""
import pytest
import torch
from PIL import Image

from lora_trainer.config import TrainConfig
from lora_trainer.dataset.scan import scan_dataset
from lora_trainer.errors import ConfigError, UserError
from lora_trainer.networks.base import autocast_probe
from lora_trainer.training import optimizers, precision
from lora_trainer.training.conditioning import CaptionConditioning
from lora_trainer.training.loop import MAX_SKIPPED_IN_A_ROW, Callbacks, train
from lora_trainer.training.precision import Precision, resolve_precision

from .fake_model import FakeModel


def cfg_of(dataset=None, **kw):
    base = dict(train_data_dir=str(dataset or "-"), resolution="64", min_bucket_reso=64, max_bucket_reso=128,
                network_dim=4, network_alpha=4, learning_rate=1e-2, max_train_steps=6, network_train_unet_only=True)
    return TrainConfig.from_dict({**base, **kw})


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data" / "5_sks"
    folder.mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (64, 64), (10 * i, 100, 200 - 5 * i)).save(folder / f"{i:02}.png")
        (folder / f"{i:02}.txt").write_text(f"sks, picture {i}")
    return tmp_path / "data"


def train_with(cfg, model=None, prec=None):
    model = model or FakeModel()
    cb = Callbacks(save=lambda network, epoch, step, final, state: "f")
    return train(cfg, model, scan_dataset(cfg), cb, precision=prec), model


# ---------------------------------------------------------------- resolving the request


def test_auto_follows_the_webuis_weights():
    assert resolve_precision(cfg_of(), "cpu", torch.float32).name == "no"
    assert resolve_precision(cfg_of(), "cpu", torch.float32).compute_dtype is None
    assert resolve_precision(cfg_of(), "cpu", torch.bfloat16).name == "bf16"


def test_fp32_on_a_half_model_is_refused_with_the_fix():
    with pytest.raises(ConfigError) as e:
        resolve_precision(cfg_of(mixed_precision="no"), "cpu", torch.float16)
    assert e.value.key == "mixed_precision" and "--no-half" in e.value.fix


def test_bf16_autocasts_on_cpu_with_fp32_masters():
    p = resolve_precision(cfg_of(mixed_precision="bf16"), "cpu", torch.float32)
    assert (p.name, p.compute_dtype, p.param_dtype, p.needs_scaler) == ("bf16", torch.bfloat16, torch.float32, False)
    with p.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_fp16_where_this_torch_cannot_autocast_it_is_refused(monkeypatch):
    # torch 2.1.2 (A1111's own): CPU autocast is bf16 only
    monkeypatch.setattr(precision, "autocast_works", lambda device, dtype: dtype == torch.bfloat16)
    with pytest.raises(ConfigError) as e:
        resolve_precision(cfg_of(mixed_precision="fp16"), "cpu", torch.float32)
    assert e.value.key == "mixed_precision" and torch.__version__ in e.value.message and "bf16" in e.value.fix


def test_fp16_on_cpu_where_torch_can_uses_a_cpu_scaler():
    if not precision.autocast_works("cpu", torch.float16):
        pytest.skip(f"torch {torch.__version__} has no CPU float16 autocast (the refusal is tested above)")
    p = resolve_precision(cfg_of(mixed_precision="fp16"), "cpu", torch.float32)
    assert p.needs_scaler and p.make_scaler() is not None


def test_full_fp16_refused_full_bf16_needs_bf16():
    with pytest.raises(ConfigError) as e:
        cfg_of(full_fp16=True)
    assert e.value.key == "full_fp16" and "full_bf16" in e.value.fix
    with pytest.raises(ConfigError) as e:
        cfg_of(full_bf16=True, mixed_precision="fp16")
    assert e.value.key == "full_bf16"
    with pytest.raises(ConfigError):       # auto resolving to fp32 cannot be full_bf16 either
        resolve_precision(cfg_of(full_bf16=True), "cpu", torch.float32)
    p = resolve_precision(cfg_of(full_bf16=True, mixed_precision="bf16"), "cpu", torch.float32)
    assert p.param_dtype == torch.bfloat16 and p.full


def test_the_cuda_scaler_of_torch_2_1_is_used_when_torch_amp_has_none(monkeypatch):
    class CudaAmpScaler:
        pass
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", CudaAmpScaler)
    assert precision.grad_scaler_class("cuda") is CudaAmpScaler
    assert isinstance(precision.make_grad_scaler("cuda"), CudaAmpScaler)
    assert precision.grad_scaler_class("cpu") is None
    with pytest.raises(ConfigError):
        precision.make_grad_scaler("cpu")


def test_cuda_fp16_resolves_with_scaling(monkeypatch):
    monkeypatch.setattr(precision, "autocast_works", lambda device, dtype: True)
    p = resolve_precision(cfg_of(), "cuda", torch.float16)       # a stock WebUI on a GPU: auto = fp16
    assert (p.name, p.device_type, p.compute_dtype, p.needs_scaler) == ("fp16", "cuda", torch.float16, True)
    with pytest.raises(ConfigError):                             # a GPU without bf16
        monkeypatch.setattr(precision, "autocast_works", lambda device, dtype: dtype != torch.bfloat16)
        resolve_precision(cfg_of(mixed_precision="bf16"), "cuda", torch.float16)


# ---------------------------------------------------------------- inside the loop


class FakeScaler:
    """What torch's GradScaler does, in plain code: scale the loss, skip a step whose gradients
    are not finite, halve the scale then (and never grow within these short runs)."""

    def __init__(self):
        self.scale_value, self.found_inf, self.steps_taken = 1024.0, False, 0

    def scale(self, loss):
        return loss * self.scale_value

    def unscale_(self, optimizer):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.found_inf = any(not torch.isfinite(g).all() for g in grads)
        for g in grads:
            g.div_(self.scale_value)

    def step(self, optimizer):
        if not self.found_inf:
            optimizer.step()
            self.steps_taken += 1

    def update(self):
        if self.found_inf:
            self.scale_value /= 2

    def get_scale(self):
        return self.scale_value


class FakeCudaFp16(Precision):
    def __init__(self, scaler):
        super().__init__("fp16", "cuda", None)
        object.__setattr__(self, "scaler", scaler)

    def make_scaler(self):
        return self.scaler


class OverflowAt(FakeModel):
    """Predicts inf on the given forward calls (counted from the first training step)."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls, self.calls = set(bad_calls), -5          # 5 fixed-noise evals come first

    def predict(self, x_t, t, cond):
        out = super().predict(x_t, t, cond)
        self.calls += 1
        return out * float("inf") if self.calls - 1 in self.bad_calls else out


def test_fp16_overflow_steps_are_skipped_and_counted(dataset):
    scaler = FakeScaler()
    result, model = train_with(cfg_of(dataset, max_train_steps=6), OverflowAt({1, 3}), FakeCudaFp16(scaler))
    assert result.state == "finished" and result.steps == 6
    assert result.skipped_steps == 2 and scaler.steps_taken == 4 and scaler.scale_value == 256.0
    assert result.mixed_precision == "fp16"
    assert all(torch.isfinite(p).all() for p in result.network.parameters())


def test_fp16_overflowing_every_step_fails_clearly(dataset):
    result_cfg = cfg_of(dataset, max_train_steps=MAX_SKIPPED_IN_A_ROW + 5)
    with pytest.raises(UserError) as e:
        train_with(result_cfg, OverflowAt(range(1000)), FakeCudaFp16(FakeScaler()))
    assert f"{MAX_SKIPPED_IN_A_ROW} steps in a row" in e.value.message and "bf16" in e.value.fix


def test_non_finite_loss_in_fp32_fails_naming_step_precision_and_images(dataset):
    with pytest.raises(UserError) as e:
        train_with(cfg_of(dataset), OverflowAt({2}))
    assert "step 3" in e.value.message and "precision no" in e.value.message and ".png" in e.value.message
    assert "learning_rate" in e.value.fix and "bf16" not in e.value.fix


def cpu_autocast_state():
    try:
        return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    except (TypeError, AttributeError):                   # torch 2.1
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


class RecordsAutocast(FakeModel):
    def predict(self, x_t, t, cond):
        self.seen = cpu_autocast_state()
        out = super().predict(x_t, t, cond)
        self.out_dtype = out.dtype
        return out


def test_bf16_run_on_cpu_autocasts_the_forward_and_keeps_fp32_masters(dataset):
    result, model = train_with(cfg_of(dataset, mixed_precision="bf16"), RecordsAutocast())
    assert result.mixed_precision == "bf16" and model.seen == (True, torch.bfloat16)
    assert model.out_dtype == torch.bfloat16
    assert {p.dtype for p in result.network.parameters()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_full_bf16_trains_a_bf16_network(dataset):
    result, _ = train_with(cfg_of(dataset, mixed_precision="bf16", full_bf16=True))
    assert {p.dtype for p in result.network.parameters()} == {torch.bfloat16}
    assert any(float(p.detach().abs().max()) > 0 for n, p in result.network.named_parameters() if "lora_up" in n)


def test_autocast_probe_sees_cpu_autocast():
    probe = autocast_probe("cpu")
    assert probe() is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert probe() is True


# ---------------------------------------------------------------- fused AdamW by trying it


def test_fused_adamw_that_fails_at_its_first_step_falls_back(monkeypatch, dataset):
    """torch 2.1.2 builds AdamW(fused=True) on CPU tensors and raises only in step()."""
    real = torch.optim.AdamW

    class AdamWOfTorch21(real):
        def __init__(self, params, **kw):
            self.was_fused = kw.get("fused", False)
            super().__init__(params, **{k: v for k, v in kw.items() if k != "fused"})

        def step(self, closure=None):
            if self.was_fused:
                raise NotImplementedError("Could not run 'aten::_fused_adamw_' with arguments from the 'CPU' backend")
            return super().step(closure)
    monkeypatch.setattr(torch.optim, "AdamW", AdamWOfTorch21)
    optimizers.fused_adamw_works.cache_clear()
    try:
        result, _ = train_with(cfg_of(dataset, max_train_steps=3))
        assert result.steps == 3 and "AdamWOfTorch21" in result.optimizer
        assert optimizers.fused_adamw_works("cpu", torch.float32) is False
    finally:
        optimizers.fused_adamw_works.cache_clear()


# ---------------------------------------------------------------- captions encoded once each


def test_each_caption_is_encoded_once_at_batch_4_over_1000_steps(dataset):
    """A per-batch cache key misses on nearly every step at batch > 1 and grows without bound."""
    result, model = train_with(cfg_of(dataset, train_batch_size=4, max_train_steps=1000, learning_rate=1e-4))
    assert result.steps == 1000
    assert model.encoded_captions == 20          # 20 distinct captions, each through the encoder once


def test_stacked_cached_captions_equal_the_batched_encoding():
    model = FakeModel()
    texts, sizes = ["a", "b c", "a"], [(64, 64)] * 3
    cached = CaptionConditioning(model, cache=True)(texts, sizes)
    assert torch.equal(cached, model.encode_captions(texts, sizes))
    assert len(CaptionConditioning(model, cache=True).store) == 0


def test_the_file_records_the_precision_that_ran(dataset, tmp_path):
    from safetensors import safe_open
    from lora_trainer.run import run_training
    cfg = cfg_of(dataset, mixed_precision="bf16", output_name="bf16run", max_train_steps=2)
    run_training(cfg, FakeModel(), str(tmp_path), lambda **kw: None, lambda: None)
    with safe_open(str(tmp_path / "bf16run.safetensors"), "pt") as f:
        assert f.metadata()["ss_mixed_precision"] == "bf16"
