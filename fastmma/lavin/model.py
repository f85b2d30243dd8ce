"""The LaVIN model: frozen LLM + frozen CLIP ViT, MMA adapters in both, a visual adapter between them."""
from __future__ import annotations

import torch
from torch import nn

from .. import patching
from ..data.samples import VLSample
from ..patching.clip import cls_features, patch_vision, vision_transformer
from .config import LaVINConfig
from .pixels import pixel_values
from .sequence import EncodedSample, assemble, encode_prompt, encode_sample


def _with_zero_gradients(loss: torch.Tensor, parameters: list[nn.Parameter]) -> torch.Tensor:
    """`loss` plus an exact 0 whose backward gives each parameter an all-zero gradient (the sum of an
    empty slice: no multiplication by 0, so even a non-finite parameter adds exactly 0)."""
    for param in parameters:
        loss = loss + param.reshape(-1)[:0].sum().to(device=loss.device, dtype=loss.dtype)
    return loss


class VisualAdapter(nn.Module):
    """Linear(D_vit, hidden) -> SiLU -> Linear(hidden, D_llm), xavier weights, zero biases."""

    def __init__(self, vision_width: int, hidden: int, llm_width: int):
        super().__init__()
        self.down = nn.Linear(vision_width, hidden)
        self.act = nn.SiLU()
        self.up = nn.Linear(hidden, llm_width)
        for linear in (self.down, self.up):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, cls_states: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(cls_states.to(self.down.weight.dtype))))


class LaVIN(nn.Module):
    """Vision-language instruction follower. Only adapters, the visual adapter and the modality
    embedding train; `llm` and `vision` are patched in place and frozen."""

    def __init__(self, llm: nn.Module, vision: nn.Module, tokenizer, config: LaVINConfig | None = None):
        super().__init__()
        self.config = config or LaVINConfig()
        if not patching.is_patched(llm):
            patching.patch(llm, self.config.llm_adapter)
        patch_vision(vision, self.config.vision_adapter)
        self.llm = llm
        self.vision = vision
        self.tokenizer = tokenizer
        self.model_spec: dict | None = None          # how to rebuild llm/vision (fastmma.lavin.build), if known
        tower = vision_transformer(vision)
        vision_width = tower.embeddings.patch_embedding.out_channels
        self.image_size = tower.embeddings.image_size
        self.num_visual_tokens = len(tower.encoder.layers) // self.config.visual_every
        if self.num_visual_tokens == 0:
            raise ValueError(f"visual_every={self.config.visual_every} exceeds the ViT's {len(tower.encoder.layers)} "
                             f"blocks: no visual tokens would be taken")
        device = tower.embeddings.patch_embedding.weight.device
        self.visual_adapter = VisualAdapter(vision_width, self.config.visual_hidden,
                                            llm.config.hidden_size).to(device)

    # -- encoding -------------------------------------------------------------------------
    def encode(self, sample: VLSample, max_length: int | None = None) -> EncodedSample:
        return encode_sample(self.tokenizer, sample, self.config.image_prefix, self.config.no_image_text,
                             max_length, self.num_visual_tokens, self.config.system_prompt)

    def visual_tokens(self, images: list) -> torch.Tensor | None:
        """[N, T, D_llm] for the images given; None (and no ViT run) when there are none."""
        if not images:
            return None
        device = self.visual_adapter.down.weight.device
        pixels = pixel_values(images, self.image_size).to(device)                            # [N, 3, H, W]
        return self.visual_adapter(cls_features(self.vision, pixels, self.config.visual_every))

    def batch_inputs(self, encoded: list[EncodedSample], pad_left: bool = False) -> dict[str, torch.Tensor]:
        images = [sample.image for sample in encoded if sample.image is not None]
        embed_tokens = self.llm.get_input_embeddings()
        return assemble(embed_tokens, encoded, self.visual_tokens(images), pad_left)

    # -- training -------------------------------------------------------------------------
    def forward(self, encoded: list[EncodedSample]):
        """Causal-LM output with `.loss` on the answer tokens of a batch of encoded samples.

        With autograd on, every trainable tensor the batch does not reach (all of the vision side when
        no sample has an image; the adapters of ViT blocks after the last tapped one) gets an exact zero
        gradient through a term that adds 0 to the loss. DistributedDataParallel without
        find_unused_parameters needs a gradient for every trainable tensor on every rank at every step
        (a rank may draw only text samples); and since a single process does the same, the optimizer
        sees the same gradients (zero, not None, for a text-only global batch) with one process or N.
        """
        output = self.llm(**self.batch_inputs(encoded))
        if output.loss is not None and torch.is_grad_enabled():
            has_images = any(sample.image is not None for sample in encoded)
            output.loss = _with_zero_gradients(output.loss, self._parameters_not_reached(has_images))
        return output

    def _parameters_not_reached(self, has_images: bool) -> list[nn.Parameter]:
        if has_images:
            layers = vision_transformer(self.vision).encoder.layers
            modules = list(layers[self.num_visual_tokens * self.config.visual_every:])     # after the last tap
        else:
            modules = [self.vision, self.visual_adapter]
        return [p for module in modules for p in module.parameters() if p.requires_grad]

    # -- generation -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], images: list | None = None, max_new_tokens: int = 32,
                 **generate_kwargs) -> list[str]:
        """Greedy (by default) KV-cached answers; images[i] may be None for a text-only prompt."""
        images = images if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(images)} images; pass one image (or None) "
                             f"per prompt")
        encoded = [encode_prompt(self.tokenizer, prompt, image, self.config.image_prefix,
                                 self.config.no_image_text, self.config.system_prompt)
                   for prompt, image in zip(prompts, images)]
        inputs = self.batch_inputs(encoded, pad_left=True)
        inputs.pop("labels")
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        was_training = self.training
        self.eval()
        try:
            new_tokens = self.llm.generate(**inputs, max_new_tokens=max_new_tokens, use_cache=True,
                                           **generate_kwargs)
        finally:
            self.train(was_training)
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]

    # -- parameters -----------------------------------------------------------------------
    def trainable_state(self) -> dict[str, nn.Parameter]:
        """Every trainable tensor, by its name in this module."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def save_pretrained(self, directory) -> None:
        """Write the trainable tensors and the config to `directory` (safetensors + JSON, atomic)."""
        from .checkpoint import save_lavin

        save_lavin(self, directory)

    @classmethod
    def from_pretrained(cls, directory, llm: nn.Module, vision: nn.Module, tokenizer) -> "LaVIN":
        """Rebuild a LaVIN saved with save_pretrained on top of the same frozen `llm` and `vision`."""
        from .checkpoint import load_lavin

        return load_lavin(directory, llm, vision, tokenizer)
