"""Build a Network for a model: pick target modules, name them like kohya, create adapters."""
from __future__ import annotations

from .base import Network
from .locon import NETWORK_TYPES
from .lora import LoRAModule
from .targets import describe_modules, select_text_encoder_targets, select_unet_targets


def _targets(model, conv: bool, with_text_encoder: bool):
    unet = model.unet_root()
    found = [(t, unet, "unet") for t in select_unet_targets(describe_modules(unet), model.family, conv=conv,
                                                              num_res_blocks=model.num_res_blocks)]
    if with_text_encoder:
        for prefix, root in model.text_encoder_roots():
            found += [(t, root, "text_encoder") for t in select_text_encoder_targets(describe_modules(root), prefix)]
    return found


def build_network(cfg, model) -> Network:
    """The network a config trains (new adapters, fp32, on the model's device)."""
    kind = NETWORK_TYPES[cfg.network_type]
    net = Network()
    modules_cache = {}
    for target, root, group in _targets(model, kind.targets_convs, cfg.train_text_encoder):
        modules = modules_cache.setdefault(id(root), dict(root.named_modules()))
        dim, alpha = kind.dim_alpha(target, cfg)
        base = modules[target.path]
        net.add(LoRAModule(target.kohya_name, base, dim, alpha), base, group)
    return net.to(model.device)


def network_from_state_dict(state: dict, model) -> tuple[Network, list[str]]:
    """A network shaped after a kohya file (dims read from it); returns it and unmatched module names."""
    net = Network()
    modules_cache = {}
    wanted = {key.partition(".")[0] for key in state}
    for target, root, group in _targets(model, conv=True, with_text_encoder=True):
        if target.kohya_name not in wanted:
            continue
        down = state.get(f"{target.kohya_name}.lora_down.weight")
        if down is None:
            continue
        modules = modules_cache.setdefault(id(root), dict(root.named_modules()))
        base = modules[target.path]
        alpha = state.get(f"{target.kohya_name}.alpha")
        net.add(LoRAModule(target.kohya_name, base, int(down.shape[0]),
                           float(alpha.float().item()) if alpha is not None else 0.0), base, group)
    net = net.to(model.device)
    unknown = net.load_kohya_state_dict(state)
    return net, unknown
