"""A training stream that can be resumed exactly.

detectron2's ``TrainingSampler`` restarts its sequence when training resumes,
and the random augmentation of a sample depends on how many samples a worker
drew before it. Here every sample has a global *position* p = 0, 1, 2, ...:

- :class:`PositionSampler` yields the positions of this process (p = rank,
  rank + world_size, ...), starting after the positions already consumed;
- :class:`PositionDataset` maps a position to an image (epoch p // N of a
  seeded permutation) and applies the mapper with the Python and NumPy random
  generators seeded from ``(seed, p)``.

So sample p is the same image with the same augmentation whatever the number
of workers or processes and whether training was interrupted: resuming at
iteration i skips exactly ``i * IMS_PER_BATCH`` positions. (With
``DATALOADER.ASPECT_RATIO_GROUPING`` and images of both orientations, detectron2
regroups samples into batches, and a resumed batch can differ; the NT sets have
one orientation.)
"""
import copy
import itertools
import random
from typing import Callable, List, Optional

import numpy as np
import torch
from detectron2.utils import comm

__all__ = ["PositionSampler", "PositionDataset", "position_seed"]


def position_seed(seed: int, position: int) -> int:
    """A 32-bit seed for sample ``position`` of a stream seeded with ``seed``."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, position]).generate_state(1)[0])


class PositionSampler(torch.utils.data.Sampler):
    """Infinite stream of global positions for this process."""

    def __init__(self, start: int = 0, rank: Optional[int] = None, world_size: Optional[int] = None):
        self._start = int(start)
        self._rank = comm.get_rank() if rank is None else rank
        self._world_size = comm.get_world_size() if world_size is None else world_size

    def __iter__(self):
        return itertools.count(self._start + self._rank, self._world_size)


class PositionDataset(torch.utils.data.Dataset):
    """Position -> mapped sample (see the module). ``len`` is the number of
    images; any position >= 0 is valid."""

    def __init__(self, dataset_dicts: List[dict], mapper: Callable[[dict], dict], seed: int, shuffle: bool = True):
        if not dataset_dicts:
            raise ValueError("the training set is empty: check DATASETS.TRAIN and the data set's files")
        self._dicts = dataset_dicts
        self._mapper = mapper
        self._seed = int(seed)
        self._shuffle = shuffle
        self._perm_epoch, self._perm = -1, None

    def __len__(self):
        return len(self._dicts)

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), len(self._dicts))
        if not self._shuffle:
            return offset
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self._seed & 0xFFFFFFFF, epoch]).permutation(len(self._dicts))
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def __getitem__(self, position: int):
        s = position_seed(self._seed, int(position))
        random.seed(s)
        np.random.seed(s)
        return self._mapper(copy.deepcopy(self._dicts[self.index(position)]))
