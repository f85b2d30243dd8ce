"""The largest amount of logits alive at once: tensors with a vocabulary-sized dimension.

A dispatch mode sees every tensor the ops under it return. Each one with a dimension of size
`vocab` (logits, their log-softmax, a chunk of them, their gradient) is counted by its storage
while any such tensor holding that storage is alive; storages that existed before (the frozen
LM head, passed in `exclude`) and weight-shaped [vocab, hidden] copies are not logits and are
left out. What a C++ kernel allocates internally is invisible here, as it is to PyTorch's allocator
statistics; fastmma's kernels write into tensors they are given.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveVocabSized(TorchDispatchMode):
    """`peak_bytes`: the most bytes of vocab-sized tensors' storages alive at once while the mode was on."""

    def __init__(self, vocab: int, hidden: int | None = None, exclude=()):
        super().__init__()
        self.vocab = vocab
        self.weight_shapes = set() if hidden is None else {(vocab, hidden), (hidden, vocab)}
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._live: dict[int, list[int]] = {}                  # storage pointer -> [bytes, tensors holding it]
        self.current_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and self._is_logits(tensor):
                self._hold(tensor)
        return out

    def _is_logits(self, tensor: torch.Tensor) -> bool:
        return (self.vocab in tensor.shape and tuple(tensor.shape) not in self.weight_shapes
                and tensor.untyped_storage().data_ptr() not in self.excluded)

    def _hold(self, tensor: torch.Tensor) -> None:
        key = tensor.untyped_storage().data_ptr()
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [tensor.untyped_storage().nbytes(), 0]
            self.current_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key, entry)

    def _release(self, key: int, entry: list[int]) -> None:
        entry[1] -= 1
        if entry[1] == 0 and self._live.get(key) is entry:
            del self._live[key]
            self.current_bytes -= entry[0]
