"""Training batches for a MIMO model: M sub-models trained at once on different examples.

Following the MIMO paper (Havasi et al. 2021), row i of a batch carries M
*different* examples, one per sub-model: each member m draws its own random
permutation of the epoch's index list, and row i holds example perm_m[i] on
input m. Two options of the paper:

- batch repetition b: the epoch's index list is the dataset repeated b times,
  so an epoch has b times as many batches (each member still shuffles on its own);
- input repetition rho: each row, with probability rho, shows member 0's
  example on every input (so a fraction rho of the rows is shared).

The permutations of epoch e depend only on (seed, e), so a resumed run
reproduces epoch e exactly. Under data parallelism every rank draws the same
permutations and takes its own contiguous slice of each global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mat_dist.data.datasets import ImageDataset
from mat_dist.plumbing.errors import UserError

_SEED_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs map to distinct generator seeds
_SEED_MODULUS = 2**63  # torch.Generator.manual_seed takes at most 64 bits


class MimoBatches:
    """Batches for training M sub-models at once: row i carries M different examples.

    ``epoch(e)`` yields (x, y) with x (B, M, C, H, W) float32 and y (B, M) int64,
    where B = batch_size // world_size is this rank's share of the global batch.
    """

    def __init__(
        self,
        data: ImageDataset,
        *,
        num_members: int,
        batch_size: int,
        seed: int,
        input_repetition: float = 0.0,
        batch_repetition: int = 1,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        _check_settings(num_members, batch_size, input_repetition, batch_repetition, rank, world_size)
        self.data = data
        self.num_members = num_members
        self.batch_size = batch_size  # global, over all ranks
        self.local_batch_size = batch_size // world_size
        self.seed = seed
        self.input_repetition = float(input_repetition)
        self.batch_repetition = batch_repetition
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.rows_per_epoch = len(data) * batch_repetition  # length of the epoch's index list
        if drop_last and self.rows_per_epoch < batch_size:
            raise UserError(
                f"the dataset has {len(data)} examples (x{batch_repetition} batch repetition), "
                f"fewer than one batch of {batch_size}; choose a smaller batch_size"
            )
        self._row_ranges = self._local_row_ranges()

    def __len__(self) -> int:
        """Batches per epoch for this rank (the same on every rank)."""
        return len(self._row_ranges)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch ``epoch`` for this rank: (x (B, M, C, H, W), y (B, M))."""
        if epoch < 0:
            raise UserError(f"epoch {epoch} is negative; epochs count from 0")
        table = self.index_table(epoch)  # (rows_per_epoch, M)
        return self._batches(table)

    def index_table(self, epoch: int) -> torch.Tensor:
        """Example indices of the whole epoch, all ranks: (rows_per_epoch, M) int64.

        Column m is member m's own permutation of the (repeated) index list;
        rows picked for input repetition copy column 0 into every column.
        """
        generator = torch.Generator().manual_seed((self.seed * _SEED_STRIDE + epoch) % _SEED_MODULUS)
        indices = torch.arange(len(self.data)).repeat(self.batch_repetition)  # (L,)
        length = indices.shape[0]
        columns = [indices[torch.randperm(length, generator=generator)] for _ in range(self.num_members)]
        table = torch.stack(columns, dim=1)  # (L, M)
        repeated = torch.rand(length, generator=generator) < self.input_repetition  # (L,) bool
        return torch.where(repeated[:, None], table[:, :1], table)  # (L, M)

    def _batches(self, table: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start, stop in self._row_ranges:
            rows = table[start:stop]  # (B, M) example indices
            yield self.data.images[rows], self.data.labels[rows]  # (B, M, C, H, W), (B, M)

    def _local_row_ranges(self) -> list[tuple[int, int]]:
        """[start, stop) rows of the epoch table that form this rank's batches.

        Full global batch k: rank r takes rows [k*bs + r*B, k*bs + (r+1)*B).
        Without drop_last, the incomplete last global batch of s rows is split
        into world_size contiguous near-equal parts (as torch.tensor_split does),
        and dropped if s < world_size, so that every rank gets a row and all
        ranks have the same number of batches.
        """
        full, remainder = divmod(self.rows_per_epoch, self.batch_size)
        share = self.local_batch_size
        first_row = self.rank * share  # within a global batch
        ranges = [(k * self.batch_size + first_row, k * self.batch_size + first_row + share) for k in range(full)]
        if not self.drop_last and remainder >= self.world_size:
            base, extra = divmod(remainder, self.world_size)
            start = full * self.batch_size + self.rank * base + min(self.rank, extra)
            ranges.append((start, start + base + (1 if self.rank < extra else 0)))
        return ranges


def _check_settings(
    num_members: int, batch_size: int, input_repetition: float, batch_repetition: int, rank: int, world_size: int
) -> None:
    """Raise UserError for settings a user can fix."""
    if num_members < 1:
        raise UserError(f"num_members {num_members} must be at least 1; choose the number of sub-models (e.g. 3)")
    if batch_size < 1:
        raise UserError(f"batch_size {batch_size} must be at least 1; choose a positive batch size")
    if not 0.0 <= input_repetition <= 1.0:
        raise UserError(f"input_repetition {input_repetition} is not a probability; choose a value in [0, 1]")
    if batch_repetition < 1:
        raise UserError(f"batch_repetition {batch_repetition} must be at least 1; use 1 for no repetition")
    if world_size < 1:
        raise UserError(f"world_size {world_size} must be at least 1; use 1 for one worker")
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside 0..{world_size - 1}; pass this worker's rank in the group")
    if batch_size % world_size != 0:
        raise UserError(
            f"batch_size {batch_size} does not divide across {world_size} workers; choose a multiple of {world_size}"
        )
