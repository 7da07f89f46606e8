"""Training loop for the affinity head on a frozen WSAG model's CAMs (affinity.md §12.2).

Why callables: the loop must not know any method's internals. It receives

- ``cam_fn(images (B, 3, H, W), labels (B,)) -> (B, h, w)`` raw CAMs of each image's own label
  (a trained method's ``predict``), and
- ``feature_fn(images) -> [(B, D_l, h', w'), ...]`` frozen backbone levels (e.g. ``Features.keys``),

both called under ``torch.no_grad``. Per batch: labels from the CAM (§12.1, optional CRF at image
resolution), psa pair masks over the half disc, the §5 loss, one optimizer step.

Optimiser: psa's SGD as executed (momentum slot 5e-4, weight decay 5e-4, poly power 0.9,
affinity.md §2) at ``lr`` for the head — psa gave its new layers 10× a base lr of 0.1 while also
training the backbone; afford freezes the backbone, so ``lr`` is the head's rate and is meant to
be tuned. ``optimizer="adam"`` is the alternative.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from afford.errors import AffordError
from afford.refine.affinity_head import AffinityHead, pair_affinity, pair_labels
from afford.refine.affinity_loss import affinity_loss
from afford.refine.crf import CRFParams
from afford.refine.labels import affinity_labels, default_crf, to_rgb255

CamFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]


@dataclass
class AffinityTrainConfig:
    """Defaults: psa's labels (α 4/32), radius 5, optimiser recipe and 8 epochs (affinity.md §3, §5)."""

    radius: int = 5
    label_mode: str = "alpha"  # "alpha" (psa) | "fixed" (IRN thresholds)
    alpha_low: float = 4.0
    alpha_high: float = 32.0
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    crf: bool = False
    crf_params: CRFParams | None = None  # None: psa's for "alpha", IRN's for "fixed"
    widths: tuple[int, ...] | None = None  # head widths; None = D_l // 8
    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 0.1
    momentum: float = 5e-4  # psa PolyOptimizer as executed (affinity.md §2 quirk)
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    epochs: int = 8
    max_steps: int | None = None
    seed: int = 0
    image_key: str = "ego"  # for dict batches (AffordanceTrainSet)


def _unpack(batch: object, image_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        if image_key not in batch or "label" not in batch:
            raise AffordError(f"affinity training batch: expected keys {image_key!r} and 'label', got {sorted(batch)}")
        return batch[image_key], batch["label"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise AffordError("affinity training batch: expected (images, labels) or a dict with images and 'label'")


def _make_optimizer(params: list[torch.nn.Parameter], cfg: AffinityTrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise AffordError(f"affinity training optimizer: expected 'sgd' or 'adam', got {cfg.optimizer!r}")


def make_labels(cams: torch.Tensor, images: torch.Tensor, grid: tuple[int, int], cfg: AffinityTrainConfig) -> torch.Tensor:
    """(B, h, w) CAMs -> (B, *grid) labels 0/1/255 per ``cfg`` (CRF on the [0, 1] images as RGB 0..255)."""
    crf = (cfg.crf_params or default_crf(cfg.label_mode)) if cfg.crf else None
    return affinity_labels(
        cams,
        mode=cfg.label_mode,
        alpha_low=cfg.alpha_low,
        alpha_high=cfg.alpha_high,
        fg_threshold=cfg.fg_threshold,
        bg_threshold=cfg.bg_threshold,
        size=grid,
        image=to_rgb255(images.float()) if crf is not None else None,
        crf=crf,
    )


def train_affinity_head(
    loader: Iterable[object],
    cam_fn: CamFn,
    feature_fn: FeatureFn,
    config: AffinityTrainConfig | None = None,
    *,
    head: AffinityHead | None = None,
    set_epoch: Callable[[int], None] | None = None,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
) -> AffinityHead:
    """Train (or continue training) an :class:`AffinityHead`; returns it in eval mode.

    ``loader`` is iterated once per epoch and yields ``(images, labels)`` or dicts with
    ``config.image_key`` and ``"label"``. ``set_epoch(e)`` is called before each epoch (e.g. the
    dataset's ``set_epoch``); ``log_fn(step, {"loss", "bg_pos", "fg_pos", "neg", "lr"})`` after each
    step. The head is built lazily from the first batch's feature dims under ``config.seed``.
    """
    cfg = config or AffinityTrainConfig()
    total = cfg.max_steps
    if total is None:
        try:
            total = cfg.epochs * len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise AffordError("affinity training max_steps: required when the loader has no len()") from None
    if total <= 0:
        raise AffordError(f"affinity training steps: expected > 0, got {total}")

    optimizer: torch.optim.Optimizer | None = None
    step = 0
    for epoch in range(cfg.epochs if cfg.max_steps is None else 1 << 30):
        if set_epoch is not None:
            set_epoch(epoch)
        seen = 0
        for batch in loader:
            seen += 1
            images, labels = _unpack(batch, cfg.image_key)
            # --- frozen teacher: features and CAMs, then confident-region labels (§12.1)
            with torch.no_grad():
                feats = [f.detach().float() for f in feature_fn(images)]
                cams = cam_fn(images, labels).detach().float()
                label_map = make_labels(cams, images, tuple(feats[0].shape[-2:]), cfg).to(feats[0].device)
            if head is None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed)
                    head = AffinityHead([f.shape[1] for f in feats], cfg.widths)
            if optimizer is None:
                head = head.to(feats[0].device).train()
                optimizer = _make_optimizer(list(head.parameters()), cfg)
            # --- poly learning rate, psa's schedule
            lr = cfg.lr * (1.0 - step / total) ** cfg.poly_power
            for group in optimizer.param_groups:
                group["lr"] = lr
            # --- affinity loss over the half-disc pairs (§3.4, §5)
            aff = pair_affinity(head(feats), cfg.radius)
            losses = affinity_loss(aff, *pair_labels(label_map, cfg.radius))
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            if log_fn is not None:
                log_fn(step, {**{k: float(v.detach()) for k, v in losses.items()}, "lr": lr})
            step += 1
            if step >= total:
                return head.eval()
        if seen == 0:
            raise AffordError("affinity training loader: yielded no batches")
    assert head is not None  # at least one batch was seen
    return head.eval()
