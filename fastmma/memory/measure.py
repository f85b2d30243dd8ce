"""What one training forward keeps for backward, attributed to the decoder layer that kept it.

`measure_saved_bytes(model, run)` runs `run()` (a forward that builds the autograd graph, e.g.
`lambda: model(ids, labels=ids).loss`) under `torch.autograd.graph.saved_tensors_hooks` and
forward pre/post hooks on every decoder layer. The pre-hook sets a "current layer" tag, the
post-hook puts the previous one back; the pack hook files each saved tensor under the tag that
was current when autograd saved it. Rules:

- one storage is counted once for the whole step (keyed by `untyped_storage().data_ptr()`),
  under the region that saved it first: the layer input that layer i's norm saves is layer
  i's, even when layer i-1 produced it;
- only storages still referenced by the graph when `run()` returns count (a saved tensor whose
  graph node was freed during the forward does not hold memory at backward time);
- parameters and buffers are excluded (frozen weights are not activations), and so are storages
  the caller passes in `exclude` (e.g. input embeddings it built itself);
- "storage bytes" are what is really kept (`untyped_storage().nbytes()`); "tensor bytes" are
  the bytes of the saved views themselves (union of their extents, at most the sum of their
  sizes). They differ when autograd saves a view of a bigger buffer, e.g. a slice of the
  logits or q/k/v slices of a fused projection output: the whole buffer stays alive;
- tensors that modules outside the layers compute once for all of them (the rotary cos/sin tables,
  found as modules named `rotary_emb`, or `outside_modules`) are filed outside even though layer 0
  saves them first, so that every layer of a uniform stack reports the same bytes;
- what is saved after the decoder (the module owning the layers, or `decoder`) returned is the LM
  head's and the loss's: `head_and_loss`; before, outside the layers: `outside`;
- a decoder layer can run more than once per step: for each layer the call with the most tokens
  is its main call, the others are reported together as `other_layer_calls` (fastmma's modality
  pass calls the layers' parts, not the layers, so what it keeps is filed under `outside`);
- with gradient checkpointing (non-reentrant), the checkpoint saves the layer's inputs outside
  its own hook, so they are filed under that layer; what the checkpointed layer saves inside
  goes to torch's checkpoint hook (the innermost one) and is not kept.

With `profile_loss=True` a CPU memory profile runs from the moment the decoder (`decoder`, the
module whose forward returns the last hidden states) returns until `run()` returns, and
`peak_loss_bytes` is the largest amount allocated above that point: the LM head and the loss,
including the logits that live only during the loss; over the same span `peak_logits_bytes` is the
most bytes of logits (tensors with a vocabulary-sized dimension, `live_logits.LiveVocabSized`) alive
at once.
"""
from __future__ import annotations

import statistics
import weakref
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .live_logits import LiveVocabSized

OUTSIDE = "outside"
HEAD_AND_LOSS = "head_and_loss"


@dataclass
class RegionBytes:
    storage_bytes: int = 0
    tensor_bytes: int = 0
    storages: int = 0

    def add(self, storage_bytes: int, tensor_bytes: int) -> None:
        self.storage_bytes += storage_bytes
        self.tensor_bytes += tensor_bytes
        self.storages += 1


@dataclass
class SavedBytes:
    """Bytes kept for backward by one forward. `layers[i]`: decoder layer i's main call."""

    tokens: int
    layers: list[RegionBytes]
    outside: RegionBytes                      # saved outside the layers before the decoder returned (embeddings, norm)
    head_and_loss: RegionBytes                # saved after the decoder returned: the LM head and the loss
    other_layer_calls: RegionBytes            # decoder layers' other calls (a model calling a layer twice)
    vocab_sized: RegionBytes                  # saved tensors whose last dim is the vocabulary (logits), any region
    tensors: list[dict] = field(default_factory=list)   # one row per kept storage
    peak_loss_bytes: int | None = None        # see the module docstring
    peak_logits_bytes: int | None = None      # see the module docstring

    def per_token_per_layer(self, kind: str = "storage") -> float:
        """Median over layers of layer bytes / tokens."""
        return statistics.median(getattr(layer, f"{kind}_bytes") for layer in self.layers) / self.tokens

    def layers_total(self, kind: str = "storage") -> int:
        return sum(getattr(layer, f"{kind}_bytes") for layer in self.layers)

    def total(self, kind: str = "storage") -> int:
        regions = [*self.layers, self.outside, self.head_and_loss, self.other_layer_calls]
        return sum(getattr(region, f"{kind}_bytes") for region in regions)

    def layer_tensors(self, index: int) -> list[dict]:
        return [row for row in self.tensors if row["region"] == f"layer {index}"]

    def summary(self) -> dict:
        out = {"tokens": self.tokens, "num_layers": len(self.layers),
               "per_token_per_layer_storage_bytes": self.per_token_per_layer("storage"),
               "per_token_per_layer_tensor_bytes": self.per_token_per_layer("tensor"),
               "layers_storage_bytes": [layer.storage_bytes for layer in self.layers],
               "layers_tensor_bytes": [layer.tensor_bytes for layer in self.layers],
               "outside": asdict(self.outside), "head_and_loss": asdict(self.head_and_loss),
               "other_layer_calls": asdict(self.other_layer_calls),
               "vocab_sized_saved": asdict(self.vocab_sized), "total_storage_bytes": self.total("storage"),
               "total_tensor_bytes": self.total("tensor")}
        if self.peak_loss_bytes is not None:
            out["peak_loss_bytes"] = self.peak_loss_bytes
            out["peak_logits_bytes"] = self.peak_logits_bytes
        return out


@dataclass
class _Entry:
    region: object                  # OUTSIDE or (layer_index, call_index)
    storage_bytes: int
    refs: list = field(default_factory=list)
    views: set = field(default_factory=set)     # (offset, shape, stride, element_size, dtype)

    def alive(self) -> bool:
        return any(ref() is not None for ref in self.refs)


class _Tracker:
    def __init__(self, excluded: set[int]):
        self.excluded = excluded
        self.claims: dict[int, weakref.ref] = {}   # storages produced by `outside_modules`: filed outside if saved
        self.entries: dict[int, _Entry] = {}
        self.region_stack: list[object] = [OUTSIDE]
        self.call_counts: dict[int, int] = {}
        self.call_tokens: dict[tuple[int, int], int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.layout != torch.strided or tensor.device.type == "meta":
            return tensor
        # Keep a detached alias: the saved output of a node would otherwise hold that node (its grad_fn) in a
        # reference cycle, and the graph of a discarded result would stay alive until the garbage collector runs.
        tensor = tensor.detach()
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or ptr in self.excluded:
            return tensor
        entry = self.entries.get(ptr)
        if entry is None or not entry.alive():          # new, or its address reused after the old one was freed
            entry = self.entries[ptr] = _Entry(self._region_for(ptr), nbytes)
        entry.refs.append(weakref.ref(tensor))
        entry.views.add((tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.element_size(),
                         str(tensor.dtype).replace("torch.", "")))
        return tensor

    def _region_for(self, ptr: int) -> object:
        """OUTSIDE for a storage an outside module produced (and that is still alive: a freed one's address
        may have been reused by a layer's tensor), else the current region."""
        claimed = self.claims.pop(ptr, None)
        return OUTSIDE if claimed is not None and claimed() is not None else self.region_stack[-1]

    def decoder_returned(self) -> None:
        if self.region_stack == [OUTSIDE]:       # the main decoder call, not a layer-level pass
            self.region_stack[0] = HEAD_AND_LOSS

    def claim_outputs(self, output) -> None:
        tensors = output if isinstance(output, (tuple, list)) else (output,)
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided:
                self.claims[tensor.untyped_storage().data_ptr()] = weakref.ref(tensor)

    def enter_layer(self, index: int, args, kwargs) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        call = self.call_counts.get(index, 0)
        self.call_counts[index] = call + 1
        tokens = int(hidden[..., 0].numel()) if isinstance(hidden, torch.Tensor) else 0
        self.call_tokens[(index, call)] = tokens
        self.region_stack.append((index, call))

    def leave_layer(self) -> None:
        self.region_stack.pop()


def _tensor_bytes(entry: _Entry) -> int:
    """Bytes of the saved views: union of their extents, at most the sum of their sizes and the storage."""
    spans, total = [], 0
    for offset, shape, stride, element_size, _ in entry.views:
        numel = 1
        for size in shape:
            numel *= size
        if numel == 0:
            continue
        total += numel * element_size
        extent = 1 + sum((size - 1) * abs(step) for size, step in zip(shape, stride))
        spans.append((offset * element_size, (offset + extent) * element_size))
    covered, end = 0, None
    for start, stop in sorted(spans):
        if end is None or start >= end:
            covered += stop - start
            end = stop
        elif stop > end:
            covered += stop - end
            end = stop
    return min(total, covered, entry.storage_bytes)


def decoder_layers(model: nn.Module):
    """The decoder layers of a Hugging Face causal LM (LLaMA layout, PEFT-wrapped or not)."""
    for candidate in (model, getattr(model, "base_model", None)):
        inner = candidate
        for _ in range(4):                      # PeftModel -> LoraModel -> LlamaForCausalLM -> LlamaModel
            if inner is None:
                break
            if isinstance(getattr(inner, "layers", None), nn.ModuleList):
                return inner.layers
            inner = getattr(inner, "model", None)
    raise TypeError(f"cannot find the decoder layers of {type(model).__name__}; pass layers= explicitly")


def measure_saved_bytes(model: nn.Module, run, *, layers=None, vocab_size: int | None = None,
                        exclude=(), profile_loss: bool = False, decoder: nn.Module | None = None,
                        outside_modules=None, keep_rows: bool = True) -> SavedBytes:
    """Bytes the forward `run()` keeps for backward, per decoder layer. See the module docstring.

    layers: the decoder layers (default: found on `model`). vocab_size: to single out logits-sized
    saved tensors (default: model.config.vocab_size). exclude: more tensors not to count.
    profile_loss: also measure `peak_loss_bytes` (needs `decoder`, or finds `layers`' owner).
    outside_modules: modules whose outputs count as outside when saved (default: those named `rotary_emb`).
    """
    layers = list(decoder_layers(model) if layers is None else layers)
    if vocab_size is None:
        vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    excluded = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), *exclude]}
    tracker = _Tracker(excluded)
    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(
            lambda module, args, kwargs, index=index: tracker.enter_layer(index, args, kwargs), with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda module, args, output: tracker.leave_layer()))
    if outside_modules is None:
        outside_modules = [module for name, module in model.named_modules() if name.split(".")[-1] == "rotary_emb"]
    for module in outside_modules:
        handles.append(module.register_forward_hook(lambda module, args, output: tracker.claim_outputs(output)))
    profiler = {}
    decoder = decoder if decoder is not None else _owner_of(model, layers, required=profile_loss)
    if decoder is not None:
        handles.append(decoder.register_forward_hook(lambda module, args, output: tracker.decoder_returned()))
    if profile_loss:
        profiler["logits"] = LiveVocabSized(vocab_size, getattr(getattr(model, "config", None), "hidden_size", None),
                                            exclude=[*model.parameters(), *model.buffers(), *exclude])
        handles.append(decoder.register_forward_hook(lambda module, args, output: _start_profiler(profiler)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(tracker.pack, lambda packed: packed):
            output = run()
        peak = _stop_profiler(profiler) if profile_loss else None
        result = _collect(tracker, layers, vocab_size, keep_rows)
    finally:
        for handle in handles:
            handle.remove()
        if profiler.get("running"):
            profiler["logits"].__exit__(None, None, None)
            profiler["profile"].__exit__(None, None, None)
    result.peak_loss_bytes = peak
    result.peak_logits_bytes = profiler["logits"].peak_bytes if profile_loss else None
    del output
    return result


def _collect(tracker: _Tracker, layers, vocab_size, keep_rows: bool) -> SavedBytes:
    main_call = {}
    for (index, call), tokens in tracker.call_tokens.items():
        if index not in main_call or tokens > tracker.call_tokens[(index, main_call[index])]:
            main_call[index] = call
    missing = [i for i in range(len(layers)) if i not in main_call]
    if missing:
        raise RuntimeError(f"decoder layers {missing} never ran during the measured forward")
    token_counts = {tracker.call_tokens[(i, c)] for i, c in main_call.items()}
    if len(token_counts) != 1:
        raise RuntimeError(f"the decoder layers' main calls saw different token counts {sorted(token_counts)}")
    per_layer = [RegionBytes() for _ in layers]
    outside, head_and_loss, other, vocab = RegionBytes(), RegionBytes(), RegionBytes(), RegionBytes()
    rows = []
    for entry in tracker.entries.values():
        if not entry.alive():
            continue
        tensor_bytes = _tensor_bytes(entry)
        if entry.region == OUTSIDE:
            region, name = outside, OUTSIDE
        elif entry.region == HEAD_AND_LOSS:
            region, name = head_and_loss, HEAD_AND_LOSS
        else:
            index, call = entry.region
            if main_call[index] == call:
                region, name = per_layer[index], f"layer {index}"
            else:
                region, name = other, "other layer calls"
        region.add(entry.storage_bytes, tensor_bytes)
        biggest = max(entry.views, key=lambda view: _numel(view[1]))
        if vocab_size and biggest[1] and biggest[1][-1] == vocab_size:
            vocab.add(entry.storage_bytes, tensor_bytes)
        if keep_rows:
            rows.append({"region": name, "shape": list(biggest[1]), "dtype": biggest[4], "views": len(entry.views),
                         "storage_bytes": entry.storage_bytes, "tensor_bytes": tensor_bytes})
    return SavedBytes(tokens=token_counts.pop(), layers=per_layer, outside=outside, head_and_loss=head_and_loss,
                      other_layer_calls=other, vocab_sized=vocab, tensors=rows)


def _numel(shape) -> int:
    out = 1
    for size in shape:
        out *= size
    return out


def _owner_of(model: nn.Module, layers, required: bool) -> nn.Module | None:
    for module in model.modules():
        if isinstance(getattr(module, "layers", None), nn.ModuleList) and len(module.layers) == len(layers) and \
                module.layers[0] is layers[0]:
            return module
    if required:
        raise TypeError("cannot find the module that owns the decoder layers; pass decoder= explicitly")
    return None


def _start_profiler(state: dict) -> None:
    if state.get("running"):
        return
    from torch.profiler import ProfilerActivity, profile

    state["profile"] = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    state["profile"].__enter__()
    state["logits"].__enter__()
    state["running"] = True


def _stop_profiler(state: dict) -> int:
    if not state.get("running"):
        raise RuntimeError("profile_loss: the decoder never returned during the measured forward")
    state["logits"].__exit__(None, None, None)
    state["profile"].__exit__(None, None, None)
    state["running"] = False
    return peak_allocated_bytes(state["profile"])


def peak_allocated_bytes(profile) -> int:
    """Largest running sum of the CPU allocations (+) and frees (-) a memory profile recorded."""
    events = [e for e in profile.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if str(event.device_type()).endswith("CPU"):
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def peak_bytes_during(fn) -> tuple[object, int]:
    """(fn(), largest amount of CPU memory allocated above the level at the call) under a memory profile."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    return out, peak_allocated_bytes(prof)
