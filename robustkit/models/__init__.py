"""Model architectures. ``create_model(name, **kw)`` builds one by name; see registry.py."""

from robustkit.models import wrn as _wrn  # noqa: F401  (registers wrn-D-K)
from robustkit.models.wrn import has_random_layers, set_generator
from robustkit.models.registry import available, check_arch, create_model
from robustkit.models.width import ChannelMasks, at_width, masked, scaled_channels, set_sync_batchnorm, set_width

__all__ = ["ChannelMasks", "masked", "available", "check_arch", "create_model", "at_width", "scaled_channels", "has_random_layers", "set_generator", "set_sync_batchnorm",
           "set_width"]
