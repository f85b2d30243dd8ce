"""LaVIN: a frozen LLaMA-family LLM and a frozen CLIP ViT joined by MMA adapters and a visual adapter."""
from .config import LaVINConfig
from .model import LaVIN

__all__ = ["LaVIN", "LaVINConfig"]
