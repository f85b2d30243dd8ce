"""MultiWay-Adapter (MWA) for torchscale's BEiT-3, registered as fastmma's "mwa" method.

`fastmma.patch(beit3, MWAConfig(...))`, `fastmma.unpatch`, `fastmma.save_adapters` and
`fastmma.load_adapters` dispatch here; `fastmma.merge` raises (the adapters are
nonlinear). torchscale is optional and imported only when a model is patched or built:
install it with `pip install --no-deps torchscale==0.3.0 fairscale==0.4.0` (without its
timm dependency). `fastmma.mwa.beit3.torchscale_classes()` imports BEiT3 and EncoderConfig
even where timm is absent; `build_beit3(BEiT3Dims(...))` builds one.
"""
from ..patching.methods import MethodHandler, register_method
from .config import MWAConfig
from .patching import METHOD, adapter_parameters, merge, patch, unpatch
from .serialization import load, save

register_method(MethodHandler(name=METHOD, config_class=MWAConfig, patch=patch, unpatch=unpatch, merge=merge,
                              save=save, load=load, parameters=adapter_parameters))

__all__ = ["MWAConfig", "adapter_parameters"]
