"""lawshift/train/order.py: one training order for any number of processes, each answer once per epoch, and
accelerate's own sharding of it (the code a multi-process run goes through) with no answer counted twice."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lawshift.train.order import GROUP_STEPS, StepSampler, epoch_order, padding, permutation

LENGTHS = [5, 9, 2, 7, 7, 1, 30, 4, 8, 3, 6]  # 11 answers: an odd number, no batch divides it


def test_an_epoch_is_the_permutation_of_seed_plus_epoch_and_others_differ():
    assert sorted(permutation(11, 3, 0)) == list(range(11))
    assert permutation(11, 3, 0) == permutation(11, 3, 0) != permutation(11, 3, 1)
    assert permutation(11, 3, 1) == permutation(11, 4, 0)  # seed + epoch, the Trainer's own seedable sampler's rule
    torch.manual_seed(0)
    first = permutation(11, 3, 0)
    torch.rand(100)  # dropout draws from the global generator: the order must not depend on them
    assert permutation(11, 3, 0) == first


@pytest.mark.parametrize("step", [1, 2, 4])
def test_grouped_by_length_each_run_of_steps_is_sorted_longest_first(step):
    order = epoch_order(LENGTHS, 7, 0, step, group_by_length=True)
    assert sorted(order) == list(range(len(LENGTHS)))
    size = step * GROUP_STEPS
    runs = [order[i:i + size] for i in range(0, len(order), size)]
    assert [set(r) for r in runs] == [set(permutation(11, 7, 0)[i:i + size]) for i in range(0, 11, size)]
    for run in runs:
        assert [LENGTHS[k] for k in run] == sorted((LENGTHS[k] for k in run), reverse=True)


@pytest.mark.parametrize("n, micro, processes, pad", [
    (11, 2, 1, 0), (11, 2, 2, 1), (11, 1, 2, 1), (12, 2, 2, 0), (11, 4, 3, 1), (10, 4, 3, 2), (1, 8, 4, 31)])
def test_padding_makes_whole_micro_batches_on_every_process(n, micro, processes, pad):
    assert padding(n, micro, processes) == pad
    assert (n + pad) % (micro * processes) == 0 or processes == 1


def shards(sampler, dataset_len: int, micro: int, processes: int, epoch: int) -> list[list[list[int]]]:
    """The micro-batches each process gets from accelerate, as the Trainer's DataLoader would be prepared."""
    from accelerate.data_loader import prepare_data_loader

    out = []
    for rank in range(processes):
        loader = torch.utils.data.DataLoader(list(range(dataset_len)), batch_size=micro, sampler=sampler,
                                             collate_fn=list)
        shard = prepare_data_loader(loader, num_processes=processes, process_index=rank, put_on_device=False)
        shard.set_epoch(epoch)
        out.append([batch for batch in shard])
    return out


@pytest.mark.parametrize("micro, processes", [(2, 2), (1, 2), (4, 3), (2, 4)])
@pytest.mark.parametrize("group_by_length", [False, True])
def test_every_answer_counts_once_per_epoch_on_any_number_of_processes(micro, processes, group_by_length):
    n, step = len(LENGTHS), micro * processes
    weights = [1.0 / (k + 1) for k in range(n)] + [0.0]  # the padding answer, at index n, weighs nothing
    for epoch in (0, 1):
        sampler = StepSampler(LENGTHS, 5, step=step, micro=micro, processes=processes, group_by_length=group_by_length)
        got = shards(sampler, n + 1, micro, processes, epoch)
        assert len({len(batches) for batches in got}) == 1  # as many micro-batches on each: no process waits
        contributed = Counter()
        for batches in got:
            for batch in batches:
                assert len(batch) == micro
                for k in batch:
                    contributed[k] += weights[k]
        assert {k: contributed[k] for k in range(n)} == {k: weights[k] for k in range(n)}
        # optimizer step s holds the answers one process with a batch of `step` holds at step s
        one = epoch_order(LENGTHS, 5, epoch, step, group_by_length) + [n] * sampler.pad
        steps = [sorted(k for batches in got for k in batches[s]) for s in range(len(got[0]))]
        assert steps == [sorted(one[i:i + step]) for i in range(0, len(one), step)]


def test_accelerate_alone_counts_the_first_answers_twice():
    """Why the padding: the Trainer's own sampler, sharded over 2 processes, wraps to the epoch's first answers."""
    n, micro = len(LENGTHS), 2
    got = shards(torch.utils.data.SequentialSampler(range(n)), n, micro, 2, 0)
    counts = Counter(k for batches in got for batch in batches for k in batch)
    assert sum(counts.values()) == 12 and max(counts.values()) == 2
