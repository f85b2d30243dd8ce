"""fastmma.patch / unpatch / merge for Hugging Face model families."""
from .core import adapter_parameters, is_patched, modality_embedding, patch, unpatch
from .merge import merge
from .registry import supported_model_types

__all__ = ["adapter_parameters", "is_patched", "merge", "modality_embedding", "patch", "supported_model_types",
           "unpatch"]
