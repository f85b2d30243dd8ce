"""The LaVIN model: frozen LLM + frozen CLIP ViT, MMA adapters in both, a visual adapter between them."""
from __future__ import annotations

import torch
from torch import nn

from .. import patching
from ..config import MMAConfig
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
    """Linear(D_vit, hidden) -> SiLU -> Linear(hidden, D_llm), xavier weights, zero biases.

    With `standardize`, each tap's CLS features are first standardized per channel with fixed statistics
    (buffers `feature_mean`, `feature_std` [T, D_vit], fitted by LaVIN.fit_visual_statistics; until then
    0 and 1). A frozen random ViT's features are dominated by a component common to every image and by
    a few huge channels; standardizing them lets the adapter see what differs between images.
    """

    def __init__(self, vision_width: int, hidden: int, llm_width: int, taps: int = 1, standardize: bool = False):
        super().__init__()
        self.down = nn.Linear(vision_width, hidden)
        self.act = nn.SiLU()
        self.up = nn.Linear(hidden, llm_width)
        for linear in (self.down, self.up):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.standardize = standardize
        if standardize:
            self.register_buffer("feature_mean", torch.zeros(taps, vision_width))
            self.register_buffer("feature_std", torch.ones(taps, vision_width))
            self.register_buffer("feature_count", torch.zeros((), dtype=torch.long))     # images fitted on; 0: not yet

    def forward(self, cls_states: torch.Tensor) -> torch.Tensor:                      # [N, T, D_vit]
        features = cls_states.to(self.down.weight.dtype)
        if self.standardize:
            features = (features - self.feature_mean) / self.feature_std
        return self.up(self.act(self.down(features)))                                 # [N, T, D_llm]


def _check_tokenizer_fits(tokenizer, llm: nn.Module) -> None:
    vocabulary = llm.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocabulary:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM's embedding has {vocabulary} rows; "
                         f"pass the tokenizer the LLM was trained with")


def _check_prompts(prompts) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of strings (one answer each); got {type(prompts).__name__}"
                        + (": wrap a single prompt as [prompt]" if isinstance(prompts, str) else ""))
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    wrong = [index for index, prompt in enumerate(prompts) if not isinstance(prompt, str)]
    if wrong:
        raise TypeError(f"prompts must be strings; those at {wrong} are not")


def _images_for(prompts: list[str], images) -> list:
    """One image (or None) per prompt; all None when `images` is None."""
    if images is None:
        return [None] * len(prompts)
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list with one image (or None) per prompt; got {type(images).__name__}")
    if len(images) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(images)} images; pass one image (or None) "
                         f"per prompt")
    return list(images)


def _config_for(llm: nn.Module, config: LaVINConfig | None) -> LaVINConfig:
    """`config`; without one, the defaults, with the MMA config of an LLM that is already patched."""
    if config is not None:
        return config
    if patching.is_patched(llm) and isinstance(llm._fastmma.config, MMAConfig):
        return LaVINConfig(llm_adapter=llm._fastmma.config)
    return LaVINConfig()


class LaVIN(nn.Module):
    """Vision-language instruction follower. Only adapters, the visual adapter and the modality
    embedding train; `llm` and `vision` are patched in place and frozen.

    An `llm` already patched by fastmma.patch keeps its adapters: without a `config`, LaVIN takes the
    LLM's MMAConfig as `config.llm_adapter` (what save_pretrained records); a `config` whose llm_adapter
    differs from the LLM's patch is refused, since the saved model could not be loaded again.
    """

    def __init__(self, llm: nn.Module, vision: nn.Module, tokenizer, config: LaVINConfig | None = None):
        super().__init__()
        self.config = _config_for(llm, config)
        _check_tokenizer_fits(tokenizer, llm)
        if not patching.is_patched(llm):
            patching.patch(llm, self.config.llm_adapter)
        elif llm._fastmma.config != self.config.llm_adapter:
            raise ValueError(f"the LLM is already patched with {llm._fastmma.config}, but LaVINConfig.llm_adapter is "
                             f"{self.config.llm_adapter} (what save_pretrained would record); pass "
                             f"LaVINConfig(llm_adapter=<the LLM's MMAConfig>) or an unpatched LLM")
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
        self.visual_adapter = VisualAdapter(vision_width, self.config.visual_hidden, llm.config.hidden_size,
                                            taps=self.num_visual_tokens,
                                            standardize=self.config.standardize_visual_features).to(device)

    # -- encoding -------------------------------------------------------------------------
    def encode(self, sample: VLSample, max_length: int | None = None) -> EncodedSample:
        return encode_sample(self.tokenizer, sample, self.config.image_prefix, self.config.no_image_text,
                             max_length, self.num_visual_tokens, self.config.system_prompt)

    def visual_tokens(self, images: list) -> torch.Tensor | None:
        """[N, T, D_llm] for the images given; None (and no ViT run) when there are none."""
        if not images:
            return None
        return self.visual_adapter(self.image_features(images))

    def image_features(self, images: list) -> torch.Tensor:
        """The ViT's CLS states [N, T, D_vit] at the tapped blocks, for the images given."""
        device = self.visual_adapter.down.weight.device
        pixels = pixel_values(images, self.image_size).to(device)                            # [N, 3, H, W]
        return cls_features(self.vision, pixels, self.config.visual_every)

    def batch_inputs(self, encoded: list[EncodedSample], pad_left: bool = False) -> dict[str, torch.Tensor]:
        images = [sample.image for sample in encoded if sample.image is not None]
        embed_tokens = self.llm.get_input_embeddings()
        return assemble(embed_tokens, encoded, self.visual_tokens(images), pad_left)

    @torch.no_grad()
    def fit_visual_statistics(self, images: list, max_images: int = 512, batch_size: int = 64) -> int:
        """Fit the visual adapter's per-tap feature mean and std on the first `max_images` images (with
        `standardize_visual_features`; a no-op otherwise). Returns how many images were used."""
        adapter = self.visual_adapter
        images = list(images)[:max_images]
        if not adapter.standardize:
            return 0
        if len(images) < 2:
            raise ValueError(f"fit_visual_statistics needs at least 2 images, got {len(images)}")
        features = torch.cat([self.image_features(images[start:start + batch_size]).float()
                              for start in range(0, len(images), batch_size)])          # [N, T, D_vit]
        adapter.feature_mean.copy_(features.mean(0))
        adapter.feature_std.copy_(features.std(0).clamp_min(1e-6))
        adapter.feature_count.fill_(len(images))
        return len(images)

    def prepare_for_training(self, samples: list[VLSample]) -> None:
        """Before the first step of a fresh run: fit the visual statistics if they are on and not fitted yet."""
        adapter = self.visual_adapter
        if adapter.standardize and int(adapter.feature_count) == 0:
            images = [sample.image for sample in samples if sample.image is not None]
            if len(images) >= 2:
                self.fit_visual_statistics(images)

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
        """Greedy (by default) KV-cached answers, one per prompt; images[i] may be None for a text-only prompt."""
        _check_prompts(prompts)
        images = _images_for(prompts, images)
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
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by its name in this module, plus the visual feature statistics when
        they are on: what save_pretrained and training checkpoints store."""
        state = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if self.visual_adapter.standardize:
            state.update({f"visual_adapter.{name}": buffer for name, buffer in self.visual_adapter.named_buffers()})
        return state

    def save_pretrained(self, directory) -> None:
        """Write the trainable tensors and the config to `directory` (safetensors + JSON, atomic)."""
        from .checkpoint import save_lavin

        save_lavin(self, directory)

    @classmethod
    def from_pretrained(cls, directory, llm: nn.Module, vision: nn.Module, tokenizer) -> "LaVIN":
        """Rebuild a LaVIN saved with save_pretrained on top of the same frozen `llm` and `vision`."""
        from .checkpoint import load_lavin

        return load_lavin(directory, llm, vision, tokenizer)
