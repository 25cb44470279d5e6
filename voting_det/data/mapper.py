"""Dataset mapper for ultrasound: detectron2's :class:`DatasetMapper` with
augmentations that keep the look of a scan.

Images are read in ``cfg.INPUT.FORMAT`` (BGR by default): a grey scan comes out
as three identical channels, so every detectron2 tool (``DefaultPredictor``,
``Visualizer``) works unchanged; a model may collapse them to one channel in its
``preprocess_image``.

Training augmentations, all set under ``cfg.INPUT.ULTRASOUND``:
resize (detectron2's ``ResizeShortestEdge`` on ``INPUT.MIN_SIZE_TRAIN``), a
horizontal flip (a fetus faces either way), brightness and contrast (gain and
dynamic range differ between scanners), and optional multiplicative gamma
speckle. Nothing blurs, rotates by large angles or warps elastically: those
would destroy the speckle texture the structures are seen through.
"""
import copy
from typing import List, Optional

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_io import read_scan

__all__ = ["RandomSpeckle", "UltrasoundDatasetMapper", "build_ultrasound_augmentation", "build_ultrasound_mapper"]


class UltrasoundDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper with its image loading replaced (the place
    detectron2 marks for it) by :func:`voting_det.data.image_io.read_scan`:
    16-bit, palette, RGBA and grey files handled, and a missing, empty or broken
    file reported with its path and image id. The rest is detectron2's:
    augmentations, annotation transforms, instances."""

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_scan(dataset_dict["file_name"], self.image_format, where=f"image_id {dataset_dict.get('image_id')!r}")
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


class RandomSpeckle(T.Augmentation):
    """Multiply the image by unit-mean gamma noise (speckle is multiplicative).

    Args:
        sigma: standard deviation of the multiplicative noise; 0 disables it.
    """

    def __init__(self, sigma: float):
        super().__init__()
        if sigma < 0:
            raise ValueError(f"INPUT.ULTRASOUND.SPECKLE_SIGMA must be >= 0, got {sigma}")
        self.sigma = sigma

    def get_transform(self, image):
        if self.sigma == 0:
            return T.NoOpTransform()
        shape = (1.0 / self.sigma) ** 2
        noise = np.random.gamma(shape, 1.0 / shape, size=image.shape[:2]).astype(np.float32)

        def apply(img, noise=noise):
            out = img.astype(np.float32) * (noise[..., None] if img.ndim == 3 else noise)
            return np.clip(out, 0, 255).astype(img.dtype)

        return T.ColorTransform(apply)


def build_ultrasound_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """The augmentation list for ``is_train`` from ``cfg.INPUT`` (see module doc)."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    us = cfg.INPUT.ULTRASOUND
    augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if us.HFLIP_PROB > 0:
        augs.append(T.RandomFlip(prob=us.HFLIP_PROB, horizontal=True, vertical=False))
    if tuple(us.BRIGHTNESS) != (1.0, 1.0):
        augs.append(T.RandomBrightness(*us.BRIGHTNESS))
    if tuple(us.CONTRAST) != (1.0, 1.0):
        augs.append(T.RandomContrast(*us.CONTRAST))
    if us.SPECKLE_SIGMA > 0:
        augs.append(RandomSpeckle(us.SPECKLE_SIGMA))
    return augs


def build_ultrasound_mapper(cfg, is_train: bool, augment: Optional[bool] = None) -> DatasetMapper:
    """:class:`UltrasoundDatasetMapper` with :func:`build_ultrasound_augmentation`.

    ``augment`` (default: ``is_train``) picks the training augmentations or the
    test-time resize; ``is_train=True, augment=False`` keeps the annotations of
    images prepared exactly as at test time."""
    args = DatasetMapper.from_config(cfg, is_train)
    args["augmentations"] = build_ultrasound_augmentation(cfg, is_train if augment is None else augment)
    return UltrasoundDatasetMapper(**copy.copy(args))
