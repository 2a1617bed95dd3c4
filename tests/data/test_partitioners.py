"""Behaviour of the registered partitioners and the per-client train/val/test split."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from plural.config import ConfigError, build
from plural.data import partitioners as P
from plural.data.partitioners import dirichlet, margins
from plural.data.types import ArrayDataset, Partition
from plural.registry import PARTITIONERS

NAMES = ("iid", "dirichlet", "pathological", "classes_per_client", "quantity", "natural")
# settings under which a different seed must give a different split
SETTINGS: dict[str, dict[str, Any]] = {"natural": {"max_clients": 20}}


def make_data(
    labels: np.ndarray,
    num_classes: int = 10,
    client_ids: np.ndarray | None = None,
    sample_groups: np.ndarray | None = None,
) -> ArrayDataset:
    n = len(labels)
    return ArrayDataset(
        name="synthetic",
        x=np.zeros((n, 1), np.float32),
        y=np.asarray(labels, dtype=np.int64),
        num_classes=num_classes,
        input_shape=(1,),
        client_ids=client_ids,
        sample_groups=sample_groups,
    )


def random_labels(n: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, n)


@pytest.fixture(scope="module")
def pool() -> ArrayDataset:
    rng = np.random.default_rng(123)
    n = 3000
    return make_data(
        rng.integers(0, 10, n),
        client_ids=rng.integers(0, 40, n),
        sample_groups=rng.integers(0, 3, n),
    )


def split(name: str, data: ArrayDataset, seed: int = 0, **settings: Any) -> Partition:
    entry = PARTITIONERS.get(name)
    partitioner = entry.target(build(entry.config_cls, settings))
    return partitioner.split(data, rng=np.random.default_rng(seed))


def assert_valid(part: Partition, n: int) -> None:
    all_idx = np.concatenate(part.client_indices)
    assert len(np.unique(all_idx)) == len(all_idx), "a sample index appears twice"
    assert all_idx.min() >= 0 and all_idx.max() < n
    for idx in part.client_indices:
        assert idx.dtype == np.int64
        assert len(idx) > 0
        assert np.all(np.diff(idx) > 0), "indices must be sorted"


def classes_for_mass(hist: np.ndarray, mass: float = 0.9) -> np.ndarray:
    """Per client, how many classes hold ``mass`` of its samples."""
    shares = np.sort(hist, axis=1)[:, ::-1] / hist.sum(axis=1, keepdims=True)
    return (np.cumsum(shares, axis=1) < mass).sum(axis=1) + 1


# --- every partitioner ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_description_and_defaults(name: str) -> None:
    entry = PARTITIONERS.get(name)
    assert entry.description
    config = build(entry.config_cls, {})
    assert entry.target(config).config is config


@pytest.mark.parametrize("name", NAMES)
def test_partition_is_valid(name: str, pool: ArrayDataset) -> None:
    part = split(name, pool, **SETTINGS.get(name, {}))
    assert_valid(part, len(pool))
    hist = part.label_histogram(pool.y, pool.num_classes)
    np.testing.assert_array_equal(hist.sum(axis=1), part.sizes())


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_split_and_other_seed_differs(name: str, pool: ArrayDataset) -> None:
    settings = SETTINGS.get(name, {})
    first, again = split(name, pool, 7, **settings), split(name, pool, 7, **settings)
    other = split(name, pool, 8, **settings)
    assert len(first.client_indices) == len(again.client_indices)
    for a, b in zip(first.client_indices, again.client_indices, strict=True):
        np.testing.assert_array_equal(a, b)
    differs = len(first.client_indices) != len(other.client_indices) or any(
        not np.array_equal(a, b)
        for a, b in zip(first.client_indices, other.client_indices, strict=True)
    )
    assert differs


@pytest.mark.parametrize("name", NAMES)
def test_leaves_global_numpy_state_alone(name: str, pool: ArrayDataset) -> None:
    before = np.random.get_state()[1].copy()
    split(name, pool, **SETTINGS.get(name, {}))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize(
    ("name", "settings", "words"),
    [
        ("iid", {"num_clients": 101}, "num_clients"),
        ("dirichlet", {"num_clients": 20, "min_samples": 6}, "min_samples"),
        ("pathological", {"num_clients": 60, "shards_per_client": 2}, "shards_per_client"),
        ("quantity", {"num_clients": 11, "min_samples": 10}, "min_samples"),
        ("classes_per_client", {"num_clients": 40, "classes": 3}, "classes"),
    ],
)
def test_infeasible_request_names_the_setting(
    name: str, settings: dict[str, Any], words: str
) -> None:
    data = make_data(np.arange(100) % 10)
    with pytest.raises(ConfigError, match=words) as err:
        split(name, data, **settings)
    assert "use " in str(err.value)  # says what would work


# --- iid --------------------------------------------------------------------------------------


def test_iid_sizes_differ_by_at_most_one() -> None:
    part = split("iid", make_data(random_labels(1003)), num_clients=10)
    sizes = part.sizes()
    assert sizes.sum() == 1003 and sizes.max() - sizes.min() <= 1


# --- dirichlet --------------------------------------------------------------------------------


@pytest.mark.parametrize(("alpha", "clients"), [(0.01, 200), (1e-3, 1000)])
def test_dirichlet_tiny_alpha_is_fast_and_keeps_minimum(alpha: float, clients: int) -> None:
    data = make_data(random_labels(20000))
    start = time.perf_counter()
    part = split("dirichlet", data, alpha=alpha, num_clients=clients, min_samples=10)
    assert time.perf_counter() - start < 2.0
    assert_valid(part, len(data))
    assert part.num_clients == clients
    assert part.sizes().min() >= 10
    assert part.sizes().sum() == len(data)


def test_dirichlet_small_alpha_skews_labels_more() -> None:
    data = make_data(random_labels(20000))
    skew = {
        alpha: classes_for_mass(
            split("dirichlet", data, alpha=alpha, num_clients=50).label_histogram(data.y, 10)
        ).mean()
        for alpha in (0.05, 100.0)
    }
    assert skew[0.05] < 3.0
    assert skew[100.0] >= 8.0


def test_dirichlet_repair_moves_only_the_deficit() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([[500, 0, 3], [0, 0, 2], [0, 400, 0], [1, 0, 0], [50, 50, 50]])
    preferred = np.array([0, 2, 1, 0, 0])
    fixed = P._repair_minimum(counts, preferred, 20, rng)
    sizes, new_sizes = counts.sum(axis=1), fixed.sum(axis=1)
    np.testing.assert_array_equal(fixed.sum(axis=0), counts.sum(axis=0))  # classes conserved
    assert (fixed >= 0).all() and new_sizes.min() >= 20
    deficit = np.maximum(20 - sizes, 0).sum()
    assert np.maximum(new_sizes - sizes, 0).sum() == deficit  # moved = total deficit
    np.testing.assert_array_equal(new_sizes[[1, 3]], [20, 20])  # receivers filled exactly
    assert new_sizes[4] == sizes[4]  # a mid-sized client is not touched


def test_dirichlet_without_deficit_needs_no_repair() -> None:
    counts = np.array([[30, 0], [0, 40]])
    out = P._repair_minimum(counts, np.array([0, 1]), 10, np.random.default_rng(0))
    np.testing.assert_array_equal(out, counts)


# --- dirichlet with a size law (label skew + quantity skew) -----------------------------------

SIZE_LAWS = ("power_law", "lognormal")


def mean_js_divergence(hist: np.ndarray) -> float:
    """Mean Jensen-Shannon divergence (nats) of each client's label mix from the global one."""
    p = hist / hist.sum(axis=1, keepdims=True)
    q = np.broadcast_to(hist.sum(axis=0) / hist.sum(), p.shape)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / b), 0.0).sum(axis=1)

    return float(((kl(p, m) + kl(q, m)) / 2).mean())


@pytest.mark.parametrize("sizes", SIZE_LAWS)
def test_dirichlet_size_law_meets_both_margins_exactly(sizes: str) -> None:
    labels = random_labels(20000)
    labels[labels == 3] = 4  # an empty class must stay empty
    data = make_data(labels)
    law = {"num_clients": 100, "min_samples": 10, "sigma": 1.5, "exponent": 1.2}
    part = split("dirichlet", data, 3, alpha=0.3, sizes=sizes, **law)
    assert_valid(part, len(data))
    got = part.sizes()
    assert got.sum() == len(data) and got.min() >= 10
    # the very sizes the quantity partitioner draws with the same law and rng state
    target = split("quantity", data, 3, distribution=sizes, **law).sizes()
    np.testing.assert_array_equal(got, target)
    assert got.max() / np.median(got) > 4
    hist = part.label_histogram(data.y, 10)
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(labels, minlength=10))


@pytest.mark.parametrize("sizes", SIZE_LAWS)
def test_dirichlet_size_law_keeps_label_skew(sizes: str) -> None:
    data = make_data(random_labels(20000))
    js = {
        alpha: mean_js_divergence(
            split("dirichlet", data, alpha=alpha, num_clients=100, sizes=sizes).label_histogram(
                data.y, 10
            )
        )
        for alpha in (0.1, 100.0)
    }
    assert js[0.1] > 0.25  # about as skewed as the default sizes (0.37 here)
    assert js[100.0] < 0.01
    assert js[0.1] > 30 * js[100.0]


@pytest.mark.parametrize("sizes", SIZE_LAWS)
def test_dirichlet_size_law_same_seed_same_split(sizes: str, pool: ArrayDataset) -> None:
    first, again, other = (
        split("dirichlet", pool, seed, alpha=0.3, sizes=sizes) for seed in (7, 7, 8)
    )
    for a, b in zip(first.client_indices, again.client_indices, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(first.client_indices, other.client_indices, strict=True)
    )


@pytest.mark.parametrize(
    ("alpha", "clients", "sizes"),
    [(1e-3, 500, "power_law"), (1e-3, 500, "lognormal"), (1e-3, 1000, "power_law")],
)
def test_dirichlet_size_law_tiny_alpha_is_fast(alpha: float, clients: int, sizes: str) -> None:
    data = make_data(random_labels(20000))
    start = time.perf_counter()
    part = split("dirichlet", data, alpha=alpha, num_clients=clients, min_samples=10, sizes=sizes)
    assert time.perf_counter() - start < 1.0
    assert_valid(part, len(data))
    assert part.num_clients == clients and part.sizes().min() >= 10
    assert part.sizes().sum() == len(data)
    # tiny alpha: most clients hold a single class
    assert np.median(classes_for_mass(part.label_histogram(data.y, 10), 0.99)) == 1


def test_dirichlet_default_sizes_is_the_per_class_draw(
    pool: ArrayDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"alpha": 0.2, "num_clients": 30, "min_samples": 20}
    default = split("dirichlet", pool, 5, **settings)
    explicit = split("dirichlet", pool, 5, sizes="dirichlet", **settings)
    # the construction before sizes existed, step by step from the same rng
    rng = np.random.default_rng(5)
    class_sizes = np.bincount(pool.y, minlength=10)
    shares = P._dirichlet(rng, 0.2, 30, 10)
    counts = np.stack([P._apportion(shares[c], int(class_sizes[c]), rng) for c in range(10)], 1)
    counts = P._repair_minimum(counts, np.argmax(shares, axis=0), 20, rng)
    owner = P._owner_from_counts(pool.y, counts, rng)
    for a, b, c in zip(
        default.client_indices,
        explicit.client_indices,
        P._partition_from_owner(owner, 30).client_indices,
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the size-law path must not run for sizes='dirichlet'")

    monkeypatch.setattr(P.DirichletPartitioner, "_counts_with_sizes", fail)
    monkeypatch.setattr(dirichlet, "_law_sizes", fail)
    split("dirichlet", pool, 5, **settings)


def test_dirichlet_size_law_exact_even_when_the_fit_is_cut_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = make_data(random_labels(20000))
    law = {"num_clients": 200, "min_samples": 10}
    target = split("quantity", data, 1, distribution="power_law", **law).sizes()
    # far from converged: the row repair must fix it
    monkeypatch.setattr(margins, "_FIT_MAX_ITER", 1)
    part = split("dirichlet", data, 1, alpha=0.1, sizes="power_law", **law)
    assert_valid(part, len(data))
    np.testing.assert_array_equal(part.sizes(), target)
    np.testing.assert_array_equal(
        part.label_histogram(data.y, 10).sum(axis=0), np.bincount(data.y, minlength=10)
    )


def test_fit_margins_converges_from_zero_shares() -> None:
    mixes = np.zeros((4, 3))
    mixes[:, 0] = 1.0  # every client wants only class 0 (what tiny alpha gives)
    rows, cols = np.array([10.0, 20.0, 30.0, 40.0]), np.array([25.0, 25.0, 50.0])
    fitted = P._fit_margins(mixes, rows, cols)
    assert np.isfinite(fitted).all() and (fitted >= 0).all()
    np.testing.assert_allclose(fitted.sum(axis=0), cols)
    np.testing.assert_allclose(fitted.sum(axis=1), rows, atol=P._FIT_TOL)


def test_round_margins_keeps_columns_and_rows() -> None:
    rng = np.random.default_rng(0)
    rows = rng.integers(10, 200, 40)
    cols = P._apportion(rng.random(5), int(rows.sum()), rng)
    fitted = P._fit_margins(P._dirichlet(rng, 0.5, 5, 40), rows.astype(float), cols.astype(float))
    counts = P._round_margins(fitted, cols, rng)
    assert (counts >= 0).all()
    np.testing.assert_array_equal(counts.sum(axis=0), cols)
    np.testing.assert_array_equal(counts.sum(axis=1), rows)  # error carrying lands on them
    assert np.abs(counts - fitted).max() < 2


def test_repair_rows_moves_only_the_excess_within_classes() -> None:
    counts = np.array([[5, 3, 0], [0, 1, 4], [2, 2, 2], [0, 0, 1]])
    fitted = np.array([[4.2, 2.6, 0.1], [0.3, 1.4, 2.9], [2.0, 2.0, 2.0], [0.5, 1.0, 0.9]])
    rows = np.array([6, 5, 6, 3])  # client 0 is 2 over, client 3 is 2 under
    fixed = P._repair_rows(counts, fitted, rows)
    np.testing.assert_array_equal(fixed.sum(axis=1), rows)
    np.testing.assert_array_equal(fixed.sum(axis=0), counts.sum(axis=0))
    assert (fixed >= 0).all()
    assert np.abs(fixed - counts).sum() == 2 * 2  # two samples moved, nothing else touched
    np.testing.assert_array_equal(fixed[[1, 2]], counts[[1, 2]])
    np.testing.assert_array_equal(fixed[3], [1, 1, 1])  # where rounding cut client 3 most
    np.testing.assert_array_equal(P._repair_rows(fixed, fitted, rows), fixed)  # already exact
    with pytest.raises(ValueError, match="row sums"):
        P._repair_rows(counts, fitted, rows + 1)


# --- pathological -----------------------------------------------------------------------------


def test_pathological_matches_fedavg_shards() -> None:
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 6000))
    data = make_data(labels)
    part = split("pathological", data, num_clients=100, shards_per_client=2)
    assert_valid(part, len(data))
    assert part.num_clients == 100
    assert (part.sizes() == 600).all()
    hist = part.label_histogram(data.y, 10)
    assert ((hist > 0).sum(axis=1) <= 2).all()
    assert set(np.unique(hist)) <= {0, 300, 600}  # each shard is 300 samples of one class


# --- classes per client -----------------------------------------------------------------------


@pytest.mark.parametrize(("clients", "classes"), [(10, 2), (25, 3), (7, 10)])
def test_classes_per_client_exact_classes_all_used(clients: int, classes: int) -> None:
    data = make_data(random_labels(5000))
    part = split("classes_per_client", data, num_clients=clients, classes=classes)
    assert_valid(part, len(data))
    held = part.label_histogram(data.y, 10) > 0
    assert (held.sum(axis=1) == classes).all()
    holders = held.sum(axis=0)
    assert (holders > 0).all() and holders.max() - holders.min() <= 1
    assert part.sizes().sum() == len(data)


def test_classes_per_client_equal_and_uneven_shares() -> None:
    data = make_data(random_labels(10000))
    equal = split("classes_per_client", data, num_clients=20, classes=2).label_histogram(data.y, 10)
    for c in range(10):  # equal shares: a class's holders differ by at most 1 sample
        held = equal[:, c][equal[:, c] > 0]
        assert held.max() - held.min() <= 1
    uneven = split(
        "classes_per_client", data, num_clients=20, classes=2, share_low=0.4, share_high=0.6
    ).label_histogram(data.y, 10)
    spread = [np.ptp(uneven[:, c][uneven[:, c] > 0]) for c in range(10)]
    assert max(spread) > 10
    ratio = uneven.max(axis=1) / uneven.sum(axis=1)
    assert (ratio < 0.7).all()  # U(0.4, 0.6) weights keep both classes substantial


def test_classes_per_client_rejects_more_classes_than_data_has() -> None:
    with pytest.raises(ConfigError, match="classes"):
        split("classes_per_client", make_data(random_labels(1000)), classes=11)


def test_classes_per_client_rejects_low_above_high() -> None:
    with pytest.raises(ConfigError, match="share_low"):
        build(
            PARTITIONERS.get("classes_per_client").config_cls, {"share_low": 0.7, "share_high": 0.6}
        )


# --- quantity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["lognormal", "power_law"])
def test_quantity_sizes_are_skewed_and_exact(distribution: str) -> None:
    data = make_data(random_labels(20000))
    part = split("quantity", data, num_clients=100, distribution=distribution, min_samples=10)
    assert_valid(part, len(data))
    sizes = part.sizes()
    assert sizes.sum() == len(data) and sizes.min() >= 10
    assert sizes.max() / np.median(sizes) > 4


# --- natural ----------------------------------------------------------------------------------


def test_natural_follows_client_ids_and_drops_small_clients() -> None:
    ids = np.array([5] * 4 + [2] * 10 + [9] * 1 + [7] * 6)
    data = make_data(np.arange(len(ids)) % 10, client_ids=ids)
    part = split("natural", data, min_samples=2)
    assert part.num_clients == 3  # client 9 (one sample) is dropped
    assert [set(ids[idx]) for idx in part.client_indices] == [{2}, {5}, {7}]
    np.testing.assert_array_equal(part.sizes(), [10, 4, 6])
    assert part.groups is None


def test_natural_max_clients_keeps_a_random_subset(pool: ArrayDataset) -> None:
    part = split("natural", pool, max_clients=5)
    assert part.num_clients == 5
    for idx in part.client_indices:
        ids = np.unique(pool.client_ids[idx])
        assert len(ids) == 1 and len(idx) == (pool.client_ids == ids[0]).sum()


def test_natural_groups_are_majority_of_sample_groups() -> None:
    ids = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    groups = np.array([3, 3, 1, 1, 2, 2, 2, 4])
    data = make_data(np.zeros(8, np.int64), client_ids=ids, sample_groups=groups)
    part = split("natural", data)
    np.testing.assert_array_equal(part.groups, [3, 2, 4])


def test_natural_without_client_ids_says_what_to_use() -> None:
    with pytest.raises(ConfigError, match=r"no natural clients.*iid, dirichlet"):
        split("natural", make_data(random_labels(100)))


def test_natural_min_samples_dropping_everything_is_an_error(pool: ArrayDataset) -> None:
    with pytest.raises(ConfigError, match="min_samples"):
        split("natural", pool, min_samples=10_000)


# --- train / validation / test ----------------------------------------------------------------


def test_train_val_test_split_is_a_stratified_partition() -> None:
    labels = random_labels(5000, 5)
    indices = np.sort(np.random.default_rng(1).choice(5000, 2000, replace=False))
    train, val, test = P.train_val_test_split(
        indices, labels, val=0.1, test=0.2, rng=np.random.default_rng(0)
    )
    for part in (train, val, test):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val, test])), indices)
    assert (len(val), len(test)) == (200, 400)
    per_class = np.bincount(labels[indices], minlength=5)
    for part, frac in ((val, 0.1), (test, 0.2)):
        np.testing.assert_allclose(np.bincount(labels[part], minlength=5), per_class * frac, atol=1)


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (1, 0.2, 0.3, (1, 0, 0)),
        (2, 0.2, 0.3, (1, 0, 1)),  # round(0.4) = 0, round(0.6) = 1
        (3, 0.2, 0.3, (1, 1, 1)),
        (2, 0.3, 0.3, (1, 0, 1)),  # both round to 1: validation gives way so train keeps 1
        (7, 0.2, 0.3, (4, 1, 2)),
    ],
)
def test_train_val_test_split_tiny_clients_keep_train(
    n: int, val: float, test: float, expected: tuple[int, int, int]
) -> None:
    indices = np.arange(10, 10 + n)
    parts = P.train_val_test_split(
        indices, np.arange(20) % 3, val=val, test=test, rng=np.random.default_rng(n)
    )
    assert tuple(len(p) for p in parts) == expected
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), indices)


def test_train_val_test_split_zero_fractions_and_bad_fractions() -> None:
    train, val, test = P.train_val_test_split(
        np.arange(50), np.zeros(50, np.int64), val=0.0, test=0.0, rng=np.random.default_rng(0)
    )
    assert len(train) == 50 and len(val) == len(test) == 0
    with pytest.raises(ValueError, match="val"):
        P.train_val_test_split(
            np.arange(5), np.zeros(5, np.int64), val=0.5, test=0.5, rng=np.random.default_rng(0)
        )


# --- class groups -----------------------------------------------------------------------------


def class_groups_data(num_classes: int = 10, seed: int = 0) -> ArrayDataset:
    """Uneven class sizes (so shares do not divide evenly), every class well populated."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(40, 80, num_classes)
    return make_data(rng.permutation(np.repeat(np.arange(num_classes), sizes)), num_classes)


def group_class_sets(part: Partition, data: ArrayDataset) -> dict[int, set[int]]:
    """The classes held by the clients of each group (asserting they all hold the same)."""
    held = part.label_histogram(data.y, data.num_classes) > 0
    sets: dict[int, set[int]] = {}
    for k, g in enumerate(part.groups):
        classes = set(np.flatnonzero(held[k]).tolist())
        assert sets.setdefault(int(g), classes) == classes, "a client holds other classes"
    return sets


def test_class_groups_is_registered_with_defaults() -> None:
    assert "class_groups" in PARTITIONERS.names()
    entry = PARTITIONERS.get("class_groups")
    assert entry.description
    config = build(entry.config_cls, {})
    assert (config.num_clients, config.groups, config.classes_per_group) == (20, 5, 2)
    assert config.shuffle_classes is False
    assert entry.target(config).config is config


@pytest.mark.parametrize(
    ("clients", "groups", "per_group"), [(20, 5, 2), (13, 4, 2), (7, 3, 3), (5, 5, 1)]
)
def test_class_groups_clients_hold_exactly_their_groups_classes(
    clients: int, groups: int, per_group: int
) -> None:
    data = class_groups_data()
    part = split(
        "class_groups", data, num_clients=clients, groups=groups, classes_per_group=per_group
    )
    assert_valid(part, len(data))
    assert part.num_clients == clients
    assert part.groups is not None and part.groups.dtype == np.int64
    counts = np.bincount(part.groups, minlength=groups)
    assert len(counts) == groups and counts.min() >= 1 and counts.max() - counts.min() <= 1
    sets = group_class_sets(part, data)
    # sorted classes, in consecutive blocks: group g gets g*per_group ... (g+1)*per_group - 1
    assert sets == {g: set(range(g * per_group, (g + 1) * per_group)) for g in range(groups)}
    union = set().union(*sets.values())
    assert len(union) == groups * per_group  # disjoint: no class in two groups


def test_class_groups_shares_are_near_equal_and_every_used_sample_assigned_once() -> None:
    data = class_groups_data()
    part = split("class_groups", data, 3, num_clients=14, groups=4, classes_per_group=2)
    hist = part.label_histogram(data.y, 10)
    for g in range(4):
        members = hist[part.groups == g]
        for c in range(2 * g, 2 * g + 2):
            assert np.ptp(members[:, c]) <= 1  # near-equal shares of each class
        assert np.ptp(members.sum(axis=1)) <= 1  # and so near-equal client sizes
    all_idx = np.concatenate(part.client_indices)
    used = data.y < 8  # classes 8 and 9 belong to no group
    np.testing.assert_array_equal(np.sort(all_idx), np.flatnonzero(used))
    assert len(np.unique(all_idx)) == len(all_idx)


def test_class_groups_same_seed_same_split_other_seed_differs() -> None:
    data = class_groups_data()
    first, again, other = (split("class_groups", data, seed) for seed in (7, 7, 8))
    for a, b in zip(first.client_indices, again.client_indices, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.groups, again.groups)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(first.client_indices, other.client_indices, strict=True)
    )


def test_class_groups_deal_clients_at_random() -> None:
    data = class_groups_data()
    deals = {tuple(split("class_groups", data, seed).groups.tolist()) for seed in range(5)}
    assert len(deals) == 5  # a random balanced deal, not the fixed k % groups
    for deal in deals:
        np.testing.assert_array_equal(np.bincount(deal), [4] * 5)


def test_class_groups_shuffle_classes_changes_which_classes_go_together() -> None:
    data = class_groups_data()
    settings = {"num_clients": 10, "groups": 3, "classes_per_group": 2}
    blocks = {frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5})}
    seen = set()
    for seed in range(6):
        plain = group_class_sets(split("class_groups", data, seed, **settings), data)
        assert {frozenset(s) for s in plain.values()} == blocks  # never shuffled by default
        part = split("class_groups", data, seed, shuffle_classes=True, **settings)
        shuffled = {frozenset(s) for s in group_class_sets(part, data).values()}
        assert all(len(s) == 2 for s in shuffled) and len(frozenset().union(*shuffled)) == 6
        seen.add(frozenset(shuffled))
    assert any(s != blocks for s in seen) and len(seen) > 1


def test_class_groups_skips_classes_without_samples() -> None:
    labels = np.repeat([0, 2, 3, 5, 7, 9], 10)
    data = make_data(labels)
    part = split("class_groups", data, num_clients=6, groups=3, classes_per_group=2)
    assert group_class_sets(part, data) == {0: {0, 2}, 1: {3, 5}, 2: {7, 9}}


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"groups": 4, "classes_per_group": 3}, r"groups \* classes_per_group.*10 classes"),
        ({"num_clients": 4, "groups": 5}, r"num_clients = 4 is below groups = 5"),
        ({"num_clients": 15, "groups": 5}, r"class 3 has 2 samples.*num_clients"),
        (
            {"num_clients": 15, "groups": 5, "shuffle_classes": True},
            r"class 3 has 2 samples.*num_clients",
        ),
    ],
)
def test_class_groups_infeasible_requests_name_the_setting(
    settings: dict[str, Any], words: str
) -> None:
    sizes = np.full(10, 5)
    sizes[3] = 2  # class 3 (in group 1) cannot give each of 3 clients a sample
    data = make_data(np.repeat(np.arange(10), sizes))
    with pytest.raises(ConfigError, match=words) as err:
        split("class_groups", data, **settings)
    assert "class_groups" in str(err.value) and "use " in str(err.value)


def test_class_groups_small_unused_class_is_fine_without_shuffle() -> None:
    sizes = np.full(10, 5)
    sizes[9] = 1  # class 9 belongs to no group
    data = make_data(np.repeat(np.arange(10), sizes))
    part = split("class_groups", data, num_clients=12, groups=4, classes_per_group=2)
    assert_valid(part, len(data))
    with pytest.raises(ConfigError, match="class 9 has 1 samples"):
        split("class_groups", data, num_clients=12, groups=4, shuffle_classes=True)


def test_class_groups_builds_a_grouped_federation() -> None:
    from plural.experiment import load_config
    from plural.runner import build_federation

    cfg = {
        "name": "class-groups",
        "seed": 0,
        "rounds": 1,
        "dataset": {"name": "digits"},
        "partition": {
            "name": "class_groups",
            "num_clients": 10,
            "groups": 5,
            "classes_per_group": 2,
        },
        "model": {"name": "mlp", "hidden": [8]},
        "algorithm": {"name": "fedavg"},
    }
    federation = build_federation(load_config(cfg))
    assert federation.num_clients == 10
    assert len(np.unique(federation.groups)) == 5
