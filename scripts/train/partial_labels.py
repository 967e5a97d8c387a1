"""Partial labels for ultralytics training: each source teaches only the classes it labels.

The merged data set ``data/mclz-v1`` has two sources that label different things:
``facemask`` pictures (prefix ``fm_``) label faces only, ``headcover`` pictures (prefix ``hc_``)
label heads and persons only. Without care, every unlabelled face in a hard-hat picture and
every unlabelled head or person in a street picture is taught as *background* for its class:
the detector is trained to ignore exactly the objects it should find (most street pictures
show bare heads; most workers show their faces).

Two changes, installed into the training process only (the saved checkpoints stay plain
ultralytics ones: the trainer strips the criterion before it pickles the model):

* **Per-source loss masking**: the classification loss of a picture is kept only for the
  classes its source labels (a ``(batch, 1, classes)`` mask multiplied into the per-anchor BCE);
  box and DFL losses are computed on assigned (labelled) objects only, so they need no mask.
* **Same-source mosaics**: a mosaic would paste four pictures into one training image, so the
  mask of one picture would be wrong for the other three quarters. Mosaic partners are drawn
  from the same source as the picture they join, so one mask is right for the whole image.

Nothing here changes validation: ultralytics' own mAP still counts an unlabelled face found in a
hard-hat picture as a false positive; ``mclz-agent model eval`` scores per source.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

#: Source prefix (``prepare_data.SOURCES``) -> the class ids that source labels.
SOURCE_CLASSES: dict[str, tuple[int, ...]] = {"fm": (0, 1), "hc": (2, 3, 4, 5)}


def source_of(path: str | Path) -> str:
    """Return the source prefix of a prepared training picture (``fm_x.jpg`` -> ``fm``)."""
    return Path(path).name.split("_", 1)[0]


def class_mask(files: list[str], nc: int) -> list[list[float]]:
    """Return one row per picture: 1.0 for a class its source labels, 0.0 for the others.

    A picture of an unknown source keeps every class (the plain loss), so a data set without
    prefixes trains exactly as before.
    """
    rows = []
    for name in files:
        labelled = SOURCE_CLASSES.get(source_of(name))
        rows.append([1.0 if labelled is None or c in labelled else 0.0 for c in range(nc)])
    return rows


def install() -> None:
    """Patch ultralytics in this process: masked classification loss, same-source mosaics."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - training only
    from ultralytics.data import augment  # noqa: PLC0415
    from ultralytics.nn import tasks  # noqa: PLC0415
    from ultralytics.utils.loss import v8DetectionLoss  # noqa: PLC0415

    class PartialLabelLoss(v8DetectionLoss):  # type: ignore[misc]
        """v8DetectionLoss whose per-anchor BCE is masked by the picture's source."""

        def __init__(self, model: Any) -> None:
            super().__init__(model)
            self._plain_bce: Any = self.__dict__["bce"]
            self._mask: Any = None
            self.bce = self._masked_bce

        def _masked_bce(self, pred: Any, target: Any) -> Any:
            loss = self._plain_bce(pred, target)
            return loss if self._mask is None else loss * self._mask

        def get_assigned_targets_and_loss(
            self, preds: dict[str, Any], batch: dict[str, Any], **kwargs: Any
        ) -> tuple[Any, ...]:
            files = batch.get("im_file")
            if files:
                rows = class_mask(list(files), self.nc)
                self._mask = torch.tensor(rows, device=self.device).view(len(rows), 1, self.nc)
            try:
                return tuple(super().get_assigned_targets_and_loss(preds, batch, **kwargs))
            finally:
                self._mask = None

    def init_criterion(self: Any) -> Any:
        return PartialLabelLoss(self)

    tasks.DetectionModel.init_criterion = init_criterion

    plain_get_params = augment.Mosaic.get_params

    def get_params(self: Any, labels: dict[str, Any]) -> Any:
        pools = getattr(self.dataset, "_mclz_source_pools", None)
        if pools is None:
            pools = {}
            for i, name in enumerate(self.dataset.im_files):
                pools.setdefault(source_of(name), []).append(i)
            self.dataset._mclz_source_pools = pools
        self._mclz_pool = pools.get(source_of(labels.get("im_file", "")))
        return plain_get_params(self, labels)

    def get_indexes(self: Any) -> list[int]:
        pool = getattr(self, "_mclz_pool", None) or range(len(self.dataset))
        return random.choices(pool, k=self.n - 1)

    augment.Mosaic.get_params = get_params
    augment.Mosaic.get_indexes = get_indexes
