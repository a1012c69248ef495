"""The order the answers are trained in: one function of (seed, epoch), whatever the number of processes.

    sampler = StepSampler(lengths, seed, step=16, micro=4, processes=2, group_by_length=True)

Each epoch is a permutation drawn from its own generator (seed + epoch, never the global RNG that dropout also
draws from), cut into optimizer steps of `step` answers; with `group_by_length` the answers of each run of
`GROUP_STEPS` steps are sorted longest first, so a micro-batch holds answers of like length (less padding).
With P processes accelerate deals micro-batches round robin, so every
step holds the same answers for any P; the tail is padded with index n, an answer of weight 0, up to whole
micro-batches on every process, where accelerate would otherwise wrap to the epoch's first answers and count them
twice (docs/scaling.md, Training on N processes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

GROUP_STEPS = 8  # optimizer steps whose answers are sorted together by length


def permutation(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(n, generator=generator).tolist()


def epoch_order(lengths: Sequence[int], seed: int, epoch: int, step: int, group_by_length: bool) -> list[int]:
    """The answers' indices in training order for one epoch (every index exactly once)."""
    order = permutation(len(lengths), seed, epoch)
    if not group_by_length:
        return order
    size = step * GROUP_STEPS
    return [k for i in range(0, len(order), size) for k in sorted(order[i:i + size], key=lambda k: -lengths[k])]


def padding(n: int, micro: int, processes: int) -> int:
    """Weight-0 answers that make `n` whole micro-batches on each of `processes` (0 with one process)."""
    if processes == 1:
        return 0
    return -n % (micro * processes)


class StepSampler(torch.utils.data.Sampler):
    """`epoch_order` plus the padding, epoch after epoch (accelerate calls `set_epoch`; a full pass also moves on)."""

    def __init__(self, lengths: Sequence[int], seed: int, *, step: int, micro: int, processes: int,
                 group_by_length: bool):
        self.lengths, self.seed, self.step, self.group_by_length = list(lengths), seed, step, group_by_length
        self.pad = padding(len(self.lengths), micro, processes)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths) + self.pad

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self, epoch: int) -> list[int]:
        order = epoch_order(self.lengths, self.seed, epoch, self.step, self.group_by_length)
        return order + [len(self.lengths)] * self.pad  # the dataset's weight-0 answer stands after the real ones

    def __iter__(self) -> Iterator[int]:
        yield from self.indices(self.epoch)
        self.epoch += 1
