"""Client partitions: IID, Dirichlet label skew and shards, deterministic per seed, with advice that helps."""

import numpy as np
import pytest

from fedsq_hf import FedSQError
from fedsq_hf.federated import partition_labels, partition_summary


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_partition_covers_every_sample_once_and_is_deterministic(method):
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    parts = partition_labels(labels, 7, method, alpha=0.3, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == 1000 and len(np.unique(joined)) == 1000
    again = partition_labels(labels, 7, method, alpha=0.3, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_labels(labels, 7, method, alpha=0.3, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    summary = partition_summary(parts, labels, 10)
    assert sum(summary["samples_per_client"]) == 1000 and len(summary["label_histogram"][0]) == 10


def test_dirichlet_skew_grows_as_alpha_shrinks_and_respects_min_size():
    labels = np.repeat(np.arange(10), 200)

    def skew(alpha):
        hist = np.array(partition_summary(partition_labels(labels, 10, "dirichlet", alpha=alpha, seed=0), labels, 10)["label_histogram"])
        return (hist.max(1) / hist.sum(1)).mean()

    assert skew(0.1) > skew(1.0) > skew(100.0)
    parts = partition_labels(labels, 10, "dirichlet", alpha=0.1, min_partition_size=20, seed=0)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(FedSQError, match="tries"):
        partition_labels(labels, 10, "dirichlet", alpha=0.01, min_partition_size=190, max_tries=3)


def test_shards_give_few_labels_per_client():
    labels = np.repeat(np.arange(10), 100)
    hist = np.array(partition_summary(partition_labels(labels, 10, "shards", shards_per_client=2), labels, 10)["label_histogram"])
    assert ((hist > 0).sum(1) <= 2).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_clients=0), "--num-clients must be >= 1"), (dict(num_clients=11), "larger than"),
    (dict(num_clients=2, method="dirichlet", alpha=0.0), "--alpha must be > 0"),
    (dict(num_clients=2, method="bogus"), r"--partition must be one of \['iid', 'dirichlet', 'shards'\]"),
    (dict(num_clients=2, method="dirichlet", min_partition_size=0), "--min-partition-size must be >= 1"),
    (dict(num_clients=2, method="shards", shards_per_client=6), "2 clients x 6 shards exceed the 10 samples"),
])
def test_partition_bad_input(kwargs, match):
    with pytest.raises(FedSQError, match=match):
        partition_labels(np.arange(10) % 2, **kwargs)


@pytest.mark.parametrize("alpha, min_size, advice", [
    (100.0, 10, "too close to the minimum for random draws to clear it \\(raising alpha will not help\\)"),
    (0.01, 2, "raise --alpha \\(less label skew\\)"),
])
def test_a_failing_dirichlet_draw_gets_advice_that_helps(alpha, min_size, advice):
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(FedSQError, match=advice):
        partition_labels(labels, 10, "dirichlet", alpha=alpha, min_partition_size=min_size, max_tries=5)
