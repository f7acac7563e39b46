"""Mean per-class error: the number FGVC-Aircraft and Caltech-256 report beside (or instead of) top-1 error.

Top-1 error weighs every test image alike, so large classes dominate; the mean per-class error weighs
every class alike. :class:`ClassErrors` is an ``evaluate`` batch hook that counts on the device and
reads the counts once.
"""

from __future__ import annotations

from typing import Optional

import torch


class ClassErrors:
    """Per-class wrong and total counts over the batches it sees.

    Args:
        num_classes: K.
    Shape:
        called as ``hook(output, labels (B,), losses (B,))`` with ``output.logits`` (B, K).
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.wrong: Optional[torch.Tensor] = None
        self.total: Optional[torch.Tensor] = None

    def __call__(self, output, labels: torch.Tensor, losses: torch.Tensor) -> None:
        wrong = (output.logits.argmax(1) != labels).long()
        counts = torch.bincount(labels, minlength=self.num_classes)  # (K,)
        errors = torch.bincount(labels, weights=wrong.float(), minlength=self.num_classes)
        self.total = counts if self.total is None else self.total + counts
        self.wrong = errors if self.wrong is None else self.wrong + errors

    def mean_class_err(self) -> Optional[float]:
        """Mean over the classes present of each class's error, in %; None before any batch."""
        if self.total is None:
            return None
        present = self.total > 0
        return float(100.0 * (self.wrong[present] / self.total[present]).mean().item())
