"""The patched model class: the original class plus a `modality=` keyword on forward.

We swap `model.__class__` for a subclass (same name) whose forward computes the router
tables, then calls the original forward. The subclass's forward advertises the original
signature plus `modality`, because `generate()` forwards a model kwarg only if forward's
signature names it, and inspects it for `position_ids` and `logits_to_keep`.
"""
from __future__ import annotations

import difflib
import functools
import inspect

import torch

from ..kv_cache import cache_field, output_cache
from ..memory import chunked_linear_cross_entropy
from .routing import modality_ids_for

_PATCHED_CLASSES: dict[type, type] = {}


def patched_class_for(base_class: type) -> type:
    if base_class not in _PATCHED_CLASSES:
        _PATCHED_CLASSES[base_class] = _make_patched_class(base_class)
    return _PATCHED_CLASSES[base_class]


def original_class(patched_class: type) -> type:
    return patched_class._fastmma_base_class


def _make_patched_class(base_class: type) -> type:
    base_forward = base_class.forward
    base_signature = inspect.signature(base_forward)

    def forward(self, *args, modality=None, **kwargs):
        _reject_misspelled_modality(kwargs)
        bound = base_signature.bind_partial(self, *args, **kwargs).arguments
        if _fills_an_unread_cache(self, bound, base_signature):
            kwargs["use_cache"] = bound["use_cache"] = False
        batch_size, device = _batch_size_and_device(bound)
        state = self._fastmma
        modality_ids = modality_ids_for(modality, batch_size, state.config.num_modalities, device)
        state.routing.refresh_tables(self, state.table_dependencies)
        state.routing.begin_main_pass(modality_ids)
        if _wants_chunked_loss(self, bound):
            return _forward_with_chunked_loss(self, bound)
        return base_forward(self, *args, **kwargs)

    forward.__signature__ = _with_modality_parameter(base_signature)
    forward.__doc__ = (base_forward.__doc__ or "") + (
        "\n\nmodality (int or LongTensor [batch], default 0): fastmma modality id per sample (0 = text, 1 = image).")
    forward.__name__ = "forward"
    forward.__qualname__ = f"{base_class.__name__}.forward"
    return type(base_class.__name__, (base_class,), {
        "forward": forward,
        "_fastmma_base_class": base_class,
        "__module__": base_class.__module__,
    })


@functools.lru_cache(maxsize=256)            # forward runs per generated token: compare each keyword once
def _looks_like_modality(name: str) -> bool:
    """`modalities`, `modality_ids`, `Modality`, `modaltiy`, ...: a keyword meant to be `modality`."""
    name = name.lower()
    return name.startswith("modal") or difflib.SequenceMatcher(None, name, "modality").ratio() >= 0.8


def _reject_misspelled_modality(kwargs: dict) -> None:
    """Hugging Face forwards pass unknown keywords on silently: a misspelled `modality` would run as text."""
    misspelled = [name for name in kwargs if _looks_like_modality(name)]
    if misspelled:
        raise TypeError(f"the patched model's forward got {misspelled}; the modality keyword is `modality=` "
                        f"(an int, or a LongTensor [batch] of ids: 0 = text, 1 = image)")


def _fills_an_unread_cache(model, arguments: dict, signature: inspect.Signature) -> bool:
    """Training (train mode, autograd on) with `use_cache` not given: Hugging Face would fill a KV cache that
    nothing reads and keep every layer's k and v alive until the step ends (16 KB per token per layer at
    LLaMA-7B in bf16, beyond what recompute_attention keeps). An explicit use_cache=True is obeyed."""
    return (model.training and torch.is_grad_enabled() and "use_cache" in signature.parameters
            and "use_cache" not in arguments)


def _wants_chunked_loss(model, arguments: dict) -> bool:
    head = model.get_output_embeddings()
    return (arguments.get("labels") is not None and model._fastmma.config.chunked_loss
            and torch.is_grad_enabled() and getattr(head, "bias", None) is None)


def _forward_with_chunked_loss(model, arguments: dict):
    """The decoder, then the LM head + loss in chunks: no [tokens, vocab] logits are kept."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    inputs = {k: v for k, v in arguments.items() if k not in ("self", "labels", "logits_to_keep", "kwargs")}
    extra = dict(arguments.get("kwargs", {}))
    num_items_in_batch = extra.pop("num_items_in_batch", None)
    outputs = model._fastmma.family.decoder(model)(**inputs, **extra)
    loss = chunked_linear_cross_entropy(outputs.last_hidden_state, model.get_output_embeddings().weight,
                                        arguments["labels"], num_items_in_batch)
    return CausalLMOutputWithPast(loss=loss, logits=None,
                                  **{cache_field(CausalLMOutputWithPast): output_cache(outputs)})


def _with_modality_parameter(signature: inspect.Signature) -> inspect.Signature:
    params = list(signature.parameters.values())
    modality = inspect.Parameter("modality", inspect.Parameter.KEYWORD_ONLY, default=None)
    insert_at = len(params)
    if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD:
        insert_at -= 1
    params.insert(insert_at, modality)
    return signature.replace(parameters=params)


def _batch_size_and_device(arguments: dict) -> tuple[int, torch.device]:
    for name in ("input_ids", "inputs_embeds"):
        value = arguments.get(name)
        if isinstance(value, torch.Tensor):
            return value.shape[0], value.device
    raise ValueError("the patched model needs input_ids or inputs_embeds to know the batch size")
