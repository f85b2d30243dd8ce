"""fastmma: fused Mixture-of-Modality adapters (LaVIN) for Hugging Face LLaMA-family models."""
from .config import MMAConfig
from .patching import adapter_parameters, is_patched, merge, patch, supported_model_types, unpatch
from .serialization import load_adapters, save_adapters
from .summary import print_trainable_parameters, trainable_parameters, trainable_summary
from .lavin import LaVIN, LaVINConfig
from .memory.estimate import estimate_memory
from .mwa import MWAConfig
from .train import TrainConfig, train

__version__ = "0.1.0"

__all__ = [
    "LaVIN", "LaVINConfig", "MMAConfig", "MWAConfig", "TrainConfig", "adapter_parameters", "estimate_memory", "is_patched", "load_adapters", "merge", "patch", "print_trainable_parameters",
    "save_adapters", "supported_model_types", "train", "trainable_parameters", "trainable_summary", "unpatch",
]
