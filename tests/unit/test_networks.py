"""LoRA/LoCon math: hooks, scale, init, kohya tensors, never touching the base weights."""
import torch

from lora_trainer.networks.base import Network
from lora_trainer.networks.lora import LoRAModule


def test_lora_starts_as_noop_and_never_touches_base_weights():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6)
    before = base.weight.detach().clone()
    lora = LoRAModule("lora_unet_x", base, dim=4, alpha=2)
    x = torch.randn(3, 8)
    y0 = base(x)
    net = Network()
    net.add(lora, base, "unet")
    with net.attached():
        assert torch.equal(base(x), y0)          # up is zero-initialised
        assert lora.lora_up.abs().sum() == 0 and lora.lora_down.abs().sum() > 0
    assert torch.equal(base.weight, before)
    assert list(base._forward_hooks) == []       # hook removed


def test_linear_delta_equals_dense_weight_delta_with_scale():
    torch.manual_seed(1)
    base = torch.nn.Linear(5, 7)
    lora = LoRAModule("m", base, dim=3, alpha=1.5)
    torch.nn.init.normal_(lora.lora_up)
    net = Network()
    net.add(lora, base, "unet")
    x = torch.randn(2, 4, 5)
    with net.attached():
        y = base(x)
    merged = torch.nn.functional.linear(x, base.weight + (lora.lora_up @ lora.lora_down) * 0.5, base.bias)
    assert lora.scale == 0.5
    torch.testing.assert_close(y, merged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lora.weight_delta(), lora.lora_up @ lora.lora_down * 0.5)


def test_conv3x3_locon_delta_matches_merged_conv_and_kohya_shapes():
    torch.manual_seed(2)
    base = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
    lora = LoRAModule("lora_unet_down_blocks_0_resnets_0_conv1", base, dim=2, alpha=1)
    torch.nn.init.normal_(lora.lora_up)
    tensors = lora.kohya_tensors()
    assert tuple(tensors["lora_down.weight"].shape) == (2, 4, 3, 3)
    assert tuple(tensors["lora_up.weight"].shape) == (6, 2, 1, 1)
    assert tensors["alpha"].shape == torch.Size([]) and float(tensors["alpha"]) == 1.0
    net = Network()
    net.add(lora, base, "unet")
    x = torch.randn(1, 4, 9, 9)
    with net.attached():
        y = base(x)
    # kohya's merge of a 3x3 LoRA: W + (up[:, :, 0, 0] @ down.flatten(1)).reshape(W.shape) * alpha / dim
    up, down = tensors["lora_up.weight"].float(), tensors["lora_down.weight"].float()
    hand_delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down) * (1 / 2)
    merged = torch.nn.functional.conv2d(x, base.weight + hand_delta, base.bias, stride=2, padding=1)
    torch.testing.assert_close(y, merged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lora.weight_delta(), hand_delta, rtol=1e-5, atol=1e-6)


def test_pointwise_conv_delta_matches_merged_conv_and_its_gradients():
    """1×1 adapters (proj_in/proj_out, shortcuts) run as matmuls: same output and gradients as the conv."""
    torch.manual_seed(3)
    base = torch.nn.Conv2d(8, 5, 1)
    lora = LoRAModule("lora_unet_mid_block_attentions_0_proj_in", base, dim=3, alpha=1.5)
    assert lora.down_is_pointwise
    torch.nn.init.normal_(lora.lora_up)
    net = Network()
    net.add(lora, base, "unet")
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    with net.attached():
        y = base(x)
    y.square().sum().backward()
    grads = (x.grad.clone(), lora.lora_down.grad.clone(), lora.lora_up.grad.clone())
    x.grad = None
    down, up = lora.lora_down.detach().requires_grad_(), lora.lora_up.detach().requires_grad_()
    h = torch.nn.functional.conv2d(x, down)
    ref = base(x) + torch.nn.functional.conv2d(h, up) * (1.5 / 3)      # alpha / dim
    ref.square().sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, (x.grad, down.grad, up.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_kohya_state_dict_round_trip_and_unknown_modules():
    base = torch.nn.Linear(4, 4)
    a = LoRAModule("lora_te_a", base, dim=2, alpha=2)
    torch.nn.init.normal_(a.lora_up)
    net = Network()
    net.add(a, base, "text_encoder")
    state = {k: v.clone() for k, v in net.kohya_state_dict().items()}
    state["lora_unet_missing.alpha"] = torch.tensor(1.0)
    b = LoRAModule("lora_te_a", base, dim=2, alpha=7)
    net2 = Network()
    net2.add(b, base, "text_encoder")
    assert net2.load_kohya_state_dict(state) == ["lora_unet_missing"]
    torch.testing.assert_close(b.lora_up, a.lora_up)
    assert b.scale == 1.0


def test_multiplier_scales_the_delta():
    torch.manual_seed(3)
    base = torch.nn.Linear(3, 3, bias=False)
    lora = LoRAModule("m", base, dim=1, alpha=1)
    torch.nn.init.ones_(lora.lora_up)
    net = Network()
    net.add(lora, base, "unet")
    x = torch.randn(1, 3)
    with net.attached():
        full = base(x) - x @ base.weight.T
        net.set_multiplier(0.5)
        half = base(x) - x @ base.weight.T
    torch.testing.assert_close(half, full * 0.5)


def _reference_sum(lora, base, x):
    """base(x) + up(down(x)) * scale written with plain convolutions / linears (no fused path)."""
    down, up = lora.lora_down.detach().requires_grad_(), lora.lora_up.detach().requires_grad_()
    if lora.is_conv:
        h = torch.nn.functional.conv2d(x, down, None, lora.stride, lora.padding, lora.dilation)
        return base(x) + torch.nn.functional.conv2d(h, up) * lora.scale, (down, up)
    return base(x) + torch.nn.functional.linear(torch.nn.functional.linear(x, down), up) * lora.scale, (down, up)


def test_fused_sum_matches_plain_delta_in_every_layout_with_gradients():
    """The hook adds the delta inside the up matmul (addmm); NCHW, channels-last (A1111's proj_out
    input), batch > 1, 3x3 and non-contiguous Linear inputs give the plain sum's values and gradients."""
    torch.manual_seed(4)
    cases = [
        (torch.nn.Linear(8, 6), lambda: torch.randn(2, 5, 8)),
        (torch.nn.Linear(8, 6, bias=False), lambda: torch.randn(5, 2, 8).transpose(0, 1)),
        (torch.nn.Conv2d(8, 5, 1), lambda: torch.randn(1, 8, 4, 3)),
        (torch.nn.Conv2d(8, 5, 1), lambda: torch.randn(2, 8, 4, 3)),
        (torch.nn.Conv2d(8, 5, 1), lambda: torch.randn(1, 4, 3, 8).permute(0, 3, 1, 2)),      # channels-last
        (torch.nn.Conv2d(8, 5, 1), lambda: torch.randn(3, 4, 3, 8).permute(0, 3, 1, 2)),
        (torch.nn.Conv2d(8, 5, 3, padding=1), lambda: torch.randn(2, 8, 6, 5)),
        (torch.nn.Conv2d(8, 5, 3, stride=2, padding=1), lambda: torch.randn(1, 6, 5, 8).permute(0, 3, 1, 2)),
    ]
    for base, make in cases:
        base.requires_grad_(False)
        lora = LoRAModule("m", base, dim=3, alpha=1.5)
        torch.nn.init.normal_(lora.lora_up)
        net = Network()
        net.add(lora, base, "unet")
        x = make().requires_grad_()
        with net.attached():
            y = base(x)
        g = torch.randn_like(y)
        y.backward(g)
        got = (x.grad.clone(), lora.lora_down.grad, lora.lora_up.grad)
        x.grad = None
        ref, (down, up) = _reference_sum(lora, base, x)
        ref.backward(g)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        assert y.is_contiguous() == ref.is_contiguous()
        for a, b in zip(got, (x.grad, down.grad, up.grad)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        with torch.no_grad(), net.attached():          # inference (eval loss, verify) takes the same path
            torch.testing.assert_close(base(x), ref.detach(), rtol=1e-5, atol=1e-5)
