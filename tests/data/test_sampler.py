from collections import Counter

import numpy as np
import pytest

from mdr.data.sampler import MPerClassBatchSampler


def labels_with_sizes(sizes):
    return np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])


def test_batches_hold_m_images_of_distinct_classes():
    labels = labels_with_sizes([10] * 40)
    sampler = MPerClassBatchSampler(labels, batch_size=32, images_per_class=4, iterations=20, seed=0)
    batches = list(sampler)
    assert len(batches) == 20
    for batch in batches:
        assert len(batch) == 32 and len(set(batch)) == 32  # no image twice
        counts = Counter(labels[batch].tolist())
        assert sorted(counts.values()) == [4] * 8


def test_small_classes_give_all_their_images_and_the_batch_is_still_filled():
    labels = labels_with_sizes([2, 1, 7, 7, 7, 7])
    sampler = MPerClassBatchSampler(labels, batch_size=12, images_per_class=3, iterations=50, seed=1)
    for batch in sampler:
        counts = Counter(labels[batch].tolist())
        assert len(batch) == 12
        assert counts.get(0, 0) <= 2 and counts.get(1, 0) <= 1
        assert all(v <= 3 for v in counts.values())


def test_partial_last_class_fills_a_non_multiple_batch():
    labels = labels_with_sizes([5] * 100)
    # the authors' SOP setting in miniature: 34 = 11 x 3 + 1
    sampler = MPerClassBatchSampler(labels, batch_size=34, images_per_class=3, iterations=5, seed=0)
    for batch in sampler:
        counts = sorted(Counter(labels[batch].tolist()).values())
        assert len(batch) == 34 and counts == [1] + [3] * 11


def test_same_seed_same_batches_and_classes_are_shuffled():
    labels = labels_with_sizes([6] * 30)
    a = list(MPerClassBatchSampler(labels, 24, 4, 10, seed=7))
    b = list(MPerClassBatchSampler(labels, 24, 4, 10, seed=7))
    c = list(MPerClassBatchSampler(labels, 24, 4, 10, seed=8))
    assert a == b and a != c
    first_classes = {tuple(sorted(set(labels[batch]))) for batch in a}
    assert len(first_classes) > 1


def test_batch_that_cannot_be_filled_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot be filled"):
        MPerClassBatchSampler(labels_with_sizes([2, 2, 2]), batch_size=12, images_per_class=4, iterations=1)
