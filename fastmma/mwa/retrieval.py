"""BEiT-3 as a dual encoder for image-text retrieval: CLS vectors, CLIP-style loss, Recall@K."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

INITIAL_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = math.log(100.0)


class DualEncoder(nn.Module):
    """Encodes images alone and texts alone with one BEiT-3; each CLS goes through its own head.

    The heads and the learnable logit scale are task parameters: they train both under
    full fine-tuning and beside the MultiWay-Adapter.
    """

    def __init__(self, beit3: nn.Module):
        super().__init__()
        hidden_size = beit3.args.encoder_embed_dim
        self.beit3 = beit3
        self.vision_head = nn.Linear(hidden_size, hidden_size, bias=False)
        self.language_head = nn.Linear(hidden_size, hidden_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INITIAL_TEMPERATURE)))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] -> unit-norm embeddings [B, D]."""
        cls = self.beit3(visual_tokens=images)["encoder_out"][:, 0]                # [B, D]
        return F.normalize(self.vision_head(cls), dim=-1)

    def encode_texts(self, token_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """token_ids [B, T], padding_mask [B, T] (True = padding) -> unit-norm embeddings [B, D]."""
        cls = self.beit3(textual_tokens=token_ids, text_padding_position=padding_mask)["encoder_out"][:, 0]
        return F.normalize(self.language_head(cls), dim=-1)

    def forward(self, images, token_ids, padding_mask) -> torch.Tensor:
        """The symmetric contrastive loss of a batch of matching (image i, text i) pairs."""
        return contrastive_loss(self.encode_images(images), self.encode_texts(token_ids, padding_mask),
                                self.logit_scale)


def contrastive_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss: mean of image->text and text->image cross-entropy; pair i matches pair i."""
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image_embeddings @ text_embeddings.T                         # [B, B]
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def recall_at_k(similarity: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """similarity [N, N] with image i matching text i -> {"i2t@k": ..., "t2i@k": ...} in percent."""
    truth = torch.arange(similarity.shape[0], device=similarity.device)
    recalls = {}
    for direction, scores in (("i2t", similarity), ("t2i", similarity.T)):
        true_score = scores[truth, truth][:, None]                                 # [N, 1]
        rank = (scores > true_score).sum(dim=1)                                    # [N] 0 = ranked first
        for k in ks:
            recalls[f"{direction}@{k}"] = 100.0 * (rank < k).float().mean().item()
    return recalls


@torch.no_grad()
def evaluate(model: DualEncoder, images: torch.Tensor, token_ids: torch.Tensor, padding_mask: torch.Tensor,
             batch_size: int = 256) -> dict[str, float]:
    """Recall@1/5/10 both ways for matching lists of images and texts."""
    was_training = model.training
    model.eval()
    image_embeddings = torch.cat([model.encode_images(chunk) for chunk in images.split(batch_size)])
    text_embeddings = torch.cat([model.encode_texts(ids, mask) for ids, mask in
                                 zip(token_ids.split(batch_size), padding_mask.split(batch_size))])
    model.train(was_training)
    return recall_at_k(image_embeddings @ text_embeddings.T)
