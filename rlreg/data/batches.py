"""Which training rows each step reads: seeded epoch-wise shuffling with a saved position."""
from __future__ import annotations

import numpy as np


class BatchCursor:
    """Seeded epoch-wise shuffling with a position that can be saved and restored."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, offset: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.offset = epoch, offset

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self) -> np.ndarray:
        out = []
        while len(out) < min(self.batch_size, self.n):
            order = self._order()
            take = order[self.offset : self.offset + self.batch_size - len(out)]
            out.extend(take.tolist())
            self.offset += len(take)
            if self.offset >= self.n:
                self.epoch, self.offset = self.epoch + 1, 0
        return np.asarray(out)

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
