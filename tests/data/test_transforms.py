"""Behaviour of the registered client transforms on small real federations."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import plural
from plural.config import ConfigError
from plural.data.federated import SPLITS, FederatedDataset, TensorSplit
from plural.data.transforms import rotate_images
from plural.data.types import ArrayDataset, Partition
from plural.registry import TRANSFORMS
from plural.runner import build_federation

NAMES = ("rotation", "noise", "brightness", "permutation", "label_swap", "label_noise", "drift")
BASE: dict[str, Any] = {
    "name": "transforms",
    "seed": 1,
    "rounds": 2,
    "dataset": {"name": "digits"},
    "partition": {"name": "iid", "num_clients": 8},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "train": {"batch_size": 32},
    "backend": {"threads_per_worker": 1},
}
# settings for the generic tests (seeded, pure, not mutating)
CASES: dict[str, dict[str, Any]] = {
    "rotation": {},
    "noise": {},
    "brightness": {"brightness": [0.0, 0.1, -0.1, 0.2]},
    "permutation": {},
    "label_swap": {},
    "label_noise": {},
    "drift": {
        "start_round": 2,
        "end_round": 5,
        "change": {"name": "noise", "groups": 1, "levels": [0.3]},
    },
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def config(*transforms: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), **top, "transforms": list(transforms)}


def transform(
    federation: FederatedDataset, name: str, seed: int = 0, **settings: Any
) -> FederatedDataset:
    entry, cfg = TRANSFORMS.parse({"name": name, **settings})
    return entry.target(cfg).apply(federation, rng=np.random.default_rng(seed))


def array_federation(
    x: np.ndarray, y: np.ndarray, num_classes: int = 10, clients: int = 8
) -> FederatedDataset:
    """``clients`` clients of consecutive samples, split 70/10/20."""
    data = ArrayDataset("arrays", x, y, num_classes, tuple(x.shape[1:]))
    parts = np.array_split(np.arange(len(y)), clients)
    rng = np.random.default_rng(0)
    return FederatedDataset.build(data, Partition(parts), val=0.1, test=0.2, rng=rng)


def vector_federation(n: int = 400, d: int = 16) -> FederatedDataset:
    rng = np.random.default_rng(5)
    return array_federation(rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 10, n))


def splits(fed: FederatedDataset, cid: int, round_index: int = 0) -> Iterator[TensorSplit]:
    client = fed.client(cid, round_index)
    return (client.split(s) for s in SPLITS)


def tensors(fed: FederatedDataset) -> list[torch.Tensor]:
    """Every tensor of the federation, the drifted data and switch rounds included."""
    out = []
    for client in fed.clients:
        for data in (client, client.drift.after) if client.drift else (client,):
            out += [t for s in SPLITS for t in (data.split(s).x, data.split(s).y)]
        if client.drift:
            out += [client.drift.switch_round[s] for s in SPLITS]
    return out


def same(a: FederatedDataset, b: FederatedDataset) -> bool:
    ta, tb = tensors(a), tensors(b)
    groups_equal = a.group_ids.keys() == b.group_ids.keys() and all(
        np.array_equal(a.group_ids[k], b.group_ids[k]) for k in a.group_ids
    )
    return groups_equal and len(ta) == len(tb) and all(map(torch.equal, ta, tb))


def by_group(fed: FederatedDataset, key: str) -> dict[int, list[int]]:
    ids = fed.group_ids[key]
    return {int(g): np.flatnonzero(ids == g).tolist() for g in np.unique(ids)}


@pytest.fixture(scope="module")
def base() -> FederatedDataset:
    return build_federation(plural.load_config(config()))


# ---------------------------------------------------------------------------------------------
# feature skew
# ---------------------------------------------------------------------------------------------


def test_importing_plural_registers_every_transform() -> None:
    assert set(NAMES) <= set(TRANSFORMS.names())
    for name in NAMES:
        assert TRANSFORMS.get(name).description


def test_rotation_groups_differ_only_by_an_exact_rotation(base: FederatedDataset) -> None:
    fed = transform(base, "rotation")
    groups = fed.group_ids["rotation"]
    assert np.bincount(groups).tolist() == [2, 2, 2, 2]
    for cid, g in enumerate(groups):
        for before, after in zip(splits(base, cid), splits(fed, cid), strict=True):
            assert torch.equal(torch.rot90(after.x, -int(g), dims=(-2, -1)), before.x)
            assert torch.equal(after.y, before.y)
            assert g == 0 or not torch.equal(after.x, before.x)


def test_rotation_by_other_angles_is_bilinear_about_the_centre() -> None:
    square = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    for k in range(1, 4):  # a hair off 90 takes the bilinear path, and agrees with rot90
        bilinear = rotate_images(square, 90.0 * k + 1e-6)
        assert torch.allclose(bilinear, torch.rot90(square, k, dims=(-2, -1)), atol=1e-4)
    wide = torch.zeros(1, 1, 6, 10)
    wide[0, 0, 1, 4] = 1.0  # offset (-0.5, -1.5) from the centre (4.5, 2.5) in (col, row)
    assert (rotate_images(wide, 90) > 0.99).nonzero().tolist() == [[0, 0, 3, 3]]
    assert torch.equal(rotate_images(wide, 180), torch.flip(wide, (-2, -1)))
    corner = rotate_images(torch.ones(1, 1, 8, 8), 45)
    assert corner[0, 0, 0, 0] == 0 and corner[0, 0, 4, 4] == pytest.approx(1.0)


def test_rotation_angles_setting_and_cfl_half_rotated(base: FederatedDataset) -> None:
    fed = transform(base, "rotation", groups=2, angles=[0, 180])
    for cid, g in enumerate(fed.group_ids["rotation"]):
        expected = base.clients[cid].train.x
        if g == 1:
            expected = torch.flip(expected, (-2, -1))
        assert torch.equal(fed.clients[cid].train.x, expected)


def test_noise_std_per_group_matches_its_level(base: FederatedDataset) -> None:
    levels = np.linspace(0.0, 0.5, 4)
    fed = transform(base, "noise")
    for g, members in by_group(fed, "noise").items():
        diffs = [
            a.x - b.x for c in members for a, b in zip(splits(fed, c), splits(base, c), strict=True)
        ]
        noise = torch.cat([d.flatten() for d in diffs])
        assert float(noise.std()) == pytest.approx(levels[g], abs=0.02 * levels[g] + 1e-6)
        assert abs(float(noise.mean())) < 0.01
    for cid in range(8):
        for a, b in zip(splits(fed, cid), splits(base, cid), strict=True):
            assert torch.equal(a.y, b.y)


def test_noise_works_on_vectors_and_is_fixed_data() -> None:
    vectors = vector_federation()
    fed = transform(vectors, "noise", groups=2, levels=[0.0, 1.0])
    assert fed.input_shape == (16,)
    noisy = by_group(fed, "noise")[1][0]
    assert not torch.equal(fed.client(noisy, 0).train.x, vectors.client(noisy, 0).train.x)
    assert torch.equal(fed.client(noisy, 0).train.x, fed.client(noisy, 7).train.x)


def test_brightness_is_the_affine_map_about_the_sample_mean(base: FederatedDataset) -> None:
    contrast, brightness = [0.5, 1.0, 2.0, 1.5], [0.0, 0.25, -0.5, 0.1]
    fed = transform(base, "brightness", contrast=contrast, brightness=brightness)
    for cid, g in enumerate(fed.group_ids["brightness"]):
        for a, b in zip(splits(fed, cid), splits(base, cid), strict=True):
            mean = b.x.mean(dim=(1, 2, 3), keepdim=True)
            expected = contrast[g] * (b.x - mean) + mean + brightness[g]
            assert torch.allclose(a.x, expected, atol=1e-6)
            assert torch.allclose(a.x.mean(dim=(1, 2, 3)), mean.flatten() + brightness[g])
            assert torch.equal(a.y, b.y)


def test_brightness_default_contrast_spreads_from_half_to_one_and_a_half() -> None:
    vectors = vector_federation()
    fed = transform(vectors, "brightness", groups=3)
    for cid, g in enumerate(fed.group_ids["brightness"]):
        a, b = fed.clients[cid].train.x, vectors.clients[cid].train.x
        ratio = (a - a.mean(1, keepdim=True)) / (b - b.mean(1, keepdim=True))
        assert torch.allclose(ratio, torch.full_like(ratio, [0.5, 1.0, 1.5][g]), atol=1e-3)


def test_permutation_is_fixed_per_group_and_keeps_pixel_values(base: FederatedDataset) -> None:
    fed = transform(base, "permutation")
    for cid, g in enumerate(fed.group_ids["permutation"]):
        for a, b in zip(splits(fed, cid), splits(base, cid), strict=True):
            flat_a, flat_b = a.x.reshape(len(a), -1), b.x.reshape(len(b), -1)
            assert torch.equal(flat_a.sort(1).values, flat_b.sort(1).values)
            assert (g == 0) == torch.equal(a.x, b.x)
    # features that are their own index reveal each client's permutation
    d = 16
    index = array_federation(np.tile(np.arange(d, dtype=np.float32), (400, 1)), np.zeros(400, int))
    fed = transform(index, "permutation", seed=3)
    orders: dict[int, torch.Tensor] = {}
    for cid, g in enumerate(fed.group_ids["permutation"]):
        for split in splits(fed, cid):
            order = orders.setdefault(int(g), split.x[0].long())
            assert (split.x.long() == order).all()  # one order for all the group's samples
    assert orders[0].tolist() == list(range(d))
    assert len({tuple(o.tolist()) for o in orders.values()}) == 4


# ---------------------------------------------------------------------------------------------
# concept shift and label noise
# ---------------------------------------------------------------------------------------------


def label_maps(fed: FederatedDataset, base: FederatedDataset, cid: int) -> dict[int, int]:
    """Original label -> new label for one client (checked to be a function)."""
    mapping: dict[int, int] = {}
    for a, b in zip(splits(fed, cid), splits(base, cid), strict=True):
        assert torch.equal(a.x, b.x)  # the inputs are the very same
        for old, new in zip(b.y.tolist(), a.y.tolist(), strict=True):
            assert mapping.setdefault(old, new) == new
    return mapping


def test_label_swap_shares_inputs_and_permutes_labels_per_group(base: FederatedDataset) -> None:
    fed = transform(base, "label_swap")
    per_group: dict[int, dict[int, int]] = {}
    for cid, g in enumerate(fed.group_ids["label_swap"]):
        mapping = label_maps(fed, base, cid)
        assert len(set(mapping.values())) == len(mapping)  # a permutation
        group = per_group.setdefault(int(g), {})
        assert all(group.setdefault(k, v) == v for k, v in mapping.items())
    assert all(k == v for k, v in per_group[0].items())
    assert all(any(k != v for k, v in per_group[g].items()) for g in (1, 2, 3))
    assert len({tuple(sorted(m.items())) for m in per_group.values()}) == 4


def test_label_swap_with_pairs_swaps_that_many_pairs(base: FederatedDataset) -> None:
    fed = transform(base, "label_swap", groups=2, swaps=2)
    for cid, g in enumerate(fed.group_ids["label_swap"]):
        mapping = label_maps(fed, base, cid)
        moved = {k for k, v in mapping.items() if k != v}
        assert len(moved) == (4 if g == 1 else 0)
        assert all(mapping[mapping[k]] == k for k in moved)  # pairs: an involution


def labels(
    fed: FederatedDataset, base: FederatedDataset, cid: int, names: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Original and transformed labels of some splits of one client."""
    new = torch.cat([fed.clients[cid].split(s).y for s in names])
    old = torch.cat([base.clients[cid].split(s).y for s in names])
    return old, new


def test_label_noise_flips_noisy_clients_at_the_rate(base: FederatedDataset) -> None:
    fed = transform(base, "label_noise", fraction=0.5, rate=0.4)
    noisy = fed.group_ids["label_noise"]
    assert noisy.sum() == 4
    changed, total = 0, 0
    for cid in range(8):
        for a, b in zip(splits(fed, cid), splits(base, cid), strict=True):
            assert torch.equal(a.x, b.x)
        old, new = labels(fed, base, cid, ("train", "val"))
        if noisy[cid]:
            changed, total = changed + int((old != new).sum()), total + len(old)
        else:
            assert torch.equal(old, new)
        assert torch.equal(fed.clients[cid].test.y, base.clients[cid].test.y)  # test is clean
    assert changed / total == pytest.approx(0.4, abs=4 * math.sqrt(0.24 / total))


def test_label_noise_symmetric_never_keeps_and_pair_shifts_by_one(base: FederatedDataset) -> None:
    sym = transform(base, "label_noise", fraction=1.0, rate=1.0)
    pair = transform(base, "label_noise", fraction=0.3, rate=0.5, mode="pair", splits=["test"])
    assert pair.group_ids["label_noise"].sum() == 2  # round(0.3 * 8)
    offsets = set()
    for cid in range(8):
        old, new = labels(sym, base, cid, ("train", "val"))
        assert (old != new).all()
        offsets |= set(((new - old) % 10).tolist())
        old, new = labels(pair, base, cid, ("test",))
        assert torch.equal(new[old != new], (old[old != new] + 1) % 10)
        assert (old != new).any() == bool(pair.group_ids["label_noise"][cid])
        assert torch.equal(pair.clients[cid].train.y, base.clients[cid].train.y)
    assert offsets == set(range(1, 10))
    assert (
        len(transform(base, "label_noise", fraction=0.01).group_ids["label_noise"].nonzero()[0])
        == 1
    )


# ---------------------------------------------------------------------------------------------
# drift
# ---------------------------------------------------------------------------------------------


def test_abrupt_drift_switches_at_start_round(base: FederatedDataset) -> None:
    change = {"name": "rotation", "groups": 1, "angles": [180]}
    fed = transform(base, "drift", fraction=0.5, start_round=3, change=change)
    drifting = fed.group_ids["drift"]
    assert drifting.sum() == 4
    assert fed.drift_rounds() == [3]
    for cid in range(8):
        for r in (0, 2):
            for a, b in zip(splits(fed, cid, r), splits(base, cid), strict=True):
                assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        for r in (3, 50):
            for a, b in zip(splits(fed, cid, r), splits(base, cid), strict=True):
                expected = torch.flip(b.x, (-2, -1)) if drifting[cid] else b.x
                assert torch.equal(a.x, expected) and torch.equal(a.y, b.y)


def test_gradual_drift_share_grows_linearly(base: FederatedDataset) -> None:
    change = {"name": "rotation", "groups": 1, "angles": [180]}
    fed = transform(base, "drift", fraction=0.5, start_round=2, end_round=11, change=change)
    shares = []
    for r in range(1, 13):
        switched = total = 0
        for cid in np.flatnonzero(fed.group_ids["drift"]):
            after = fed.clients[cid].drift.after
            for name in SPLITS:
                now, new = fed.client(int(cid), r).split(name).x, after.split(name).x
                switched += int((now == new).flatten(1).all(1).sum())
                total += len(now)
        shares.append(switched / total)
    assert shares[0] == 0 and shares[-2] == shares[-1] == 1
    assert all(a <= b for a, b in itertools.pairwise(shares))
    for r, share in enumerate(shares[:-1], start=1):  # rounds 2..11 add a tenth each
        assert share == pytest.approx(min(max(r - 1, 0), 10) / 10, abs=0.08)


def test_drift_of_labels_keeps_later_per_sample_noise(base: FederatedDataset) -> None:
    cfg = config(
        {
            "name": "drift",
            "start_round": 2,
            "change": {"name": "label_swap", "groups": 1, "identity_first": False},
        },
        {"name": "noise", "groups": 1, "levels": [0.3]},
    )
    fed = build_federation(plural.load_config(cfg))
    assert set(fed.group_ids) == {"drift", "noise"}
    cid = int(np.flatnonzero(fed.group_ids["drift"])[0])
    before, after = fed.client(cid, 1), fed.client(cid, 2)
    assert torch.equal(before.train.x, after.train.x)  # a sample keeps its noise when it drifts
    assert not torch.equal(before.train.x, base.client(cid).train.x)
    assert not torch.equal(before.train.y, after.train.y)


# ---------------------------------------------------------------------------------------------
# composition, purity, errors
# ---------------------------------------------------------------------------------------------


def test_rotation_then_label_noise_runs_end_to_end() -> None:
    cfg = config({"name": "rotation", "groups": 2}, {"name": "label_noise", "fraction": 0.5})
    fed = build_federation(plural.load_config(cfg))
    assert list(fed.group_ids) == ["rotation", "label_noise"]
    pairs = set(zip(fed.group_ids["rotation"], fed.group_ids["label_noise"], strict=True))
    assert len(np.unique(fed.groups)) == len(pairs) == 2 * 2
    results = plural.run(cfg)
    assert results.metrics["round"].max() == 2
    assert np.isfinite(results.metrics["loss"]).all()


def test_two_transforms_of_a_kind_get_distinct_groupings(base: FederatedDataset) -> None:
    fed = transform(transform(base, "rotation"), "rotation", seed=1, groups=2, angles=[0, 90])
    assert set(fed.group_ids) == {"rotation", "rotation_2"}
    assert len(np.unique(fed.groups)) > 4


@pytest.mark.parametrize("name", ["rotation", "noise", "brightness", "permutation", "label_swap"])
@pytest.mark.parametrize(
    ("clients", "shares", "counts"),
    [
        (100, [0.7, 0.2, 0.07, 0.03], [70, 20, 7, 3]),
        (10, [5, 3, 1, 1], [5, 3, 1, 1]),  # shares need not sum to 1
        (7, [1, 1, 1, 1], [2, 2, 2, 1]),  # largest remainders; the counts sum to the clients
        (1000, [250, 250, 250, 240, 7, 3], [250, 250, 250, 240, 7, 3]),
    ],
)
def test_grouping_transforms_size_groups_by_their_shares(
    name: str, clients: int, shares: list[float], counts: list[int]
) -> None:
    rng = np.random.default_rng(clients)
    images = rng.normal(size=(10 * clients, 1, 4, 4)).astype(np.float32)
    fed = array_federation(images, rng.integers(0, 10, 10 * clients), clients=clients)
    groups = len(shares)
    settings: dict[str, Any] = {"groups": groups, "shares": shares}
    if name == "brightness":
        settings["brightness"] = [0.0] * groups
    grouped = transform(fed, name, seed=3, **settings)
    assert np.bincount(grouped.group_ids[name], minlength=groups).tolist() == counts
    again = transform(fed, name, seed=4, **settings).group_ids[name]
    assert not np.array_equal(again, grouped.group_ids[name])  # placed at random, per seed
    assert np.bincount(again, minlength=groups).tolist() == counts


def test_shares_too_small_for_the_clients_are_refused_before_any_work(
    base: FederatedDataset,
) -> None:
    with pytest.raises(
        ConfigError, match=r"label_swap\.shares: group\(s\) \[2, 3\] get no client of 8"
    ):
        transform(base, "label_swap", groups=4, shares=[0.9, 0.05, 0.04, 0.01])
    with pytest.raises(ConfigError, match=r"shares: 3 values for groups = 4"):
        plural.load_config(config({"name": "rotation", "shares": [0.5, 0.3, 0.2]}))
    with pytest.raises(ConfigError, match=r"shares\[1\]: must be > 0"):
        plural.load_config(config({"name": "label_swap", "shares": [0.5, 0, 0.3, 0.2]}))


@pytest.mark.parametrize("name", NAMES)
def test_transforms_are_seeded_and_pure(base: FederatedDataset, name: str) -> None:
    snapshot = [t.clone() for t in tensors(base)]
    first = transform(base, name, seed=4, **CASES[name])
    assert same(first, transform(base, name, seed=4, **CASES[name]))
    assert not same(first, transform(base, name, seed=5, **CASES[name]))
    assert all(map(torch.equal, snapshot, tensors(base)))
    assert list(base.group_ids) == [] and list(first.group_ids) == [name]


@pytest.mark.parametrize(
    ("transforms", "match"),
    [
        ([{"name": "rotation", "angles": [0, 90]}], r"transforms\[0\]: angles: 2 values .* 4"),
        ([{"name": "noise", "groups": 2, "levels": [0.1]}], r"transforms\[0\]: levels"),
        ([{"name": "brightness", "groups": 2, "contrast": [1.0]}], r"transforms\[0\]: contrast"),
        ([{"name": "noise"}, {"name": "rotate"}], r"transforms\[1\]\.name: unknown .*rotation"),
        (
            [{"name": "drift", "change": {"name": "rotate"}}],
            r"transforms\[0\]: change\.name: unknown transform 'rotate'.*rotation",
        ),
        (
            [{"name": "drift", "change": {"name": "rotation", "angle": [90]}}],
            r"change\.angle: unknown setting\. Did you mean 'angles'",
        ),
        ([{"name": "drift", "change": {"name": "drift"}}], r"change\.name: .*another drift"),
        ([{"name": "drift", "start_round": 5, "end_round": 4}], r"end_round: 4 is before"),
        ([{"name": "label_noise", "mode": "flip"}], r"transforms\[0\]\.mode: must be one of"),
        ([{"name": "label_noise", "splits": ["training"]}], r"transforms\[0\]\.splits\[0\]"),
    ],
)
def test_bad_settings_name_the_key(transforms: list[dict[str, Any]], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        plural.load_config(config(*transforms))


@pytest.mark.parametrize(
    ("transforms", "match"),
    [
        ([{"name": "label_swap", "swaps": 6}], r"label_swap\.swaps: 6 disjoint pairs .* <= 5"),
        ([{"name": "rotation", "groups": 9}], r"rotation\.groups: 9 groups for 8 clients"),
        ([{"name": "label_swap", "groups": 3, "swaps": 5}], None),  # 945 pairings: fine
        (
            [{"name": "drift", "change": {"name": "rotation", "groups": 5}}],
            r"drift\.change: rotation\.groups: 5 groups for 4 clients",
        ),
        ([{"name": "drift"}, {"name": "drift"}], r"drift: the federation already drifts"),
    ],
)
def test_infeasible_settings_fail_on_the_data(
    transforms: list[dict[str, Any]], match: str | None
) -> None:
    cfg = plural.load_config(config(*transforms))
    if match is None:
        build_federation(cfg)
        return
    with pytest.raises(ConfigError, match=match):
        build_federation(cfg)


def test_rotation_needs_images_and_label_swap_needs_enough_permutations() -> None:
    with pytest.raises(ConfigError, match=r"rotation: .*\(C, H, W\).*input_shape \(16,\)"):
        transform(vector_federation(), "rotation")
    two_classes = array_federation(np.zeros((80, 3), np.float32), np.arange(80) % 2, 2)
    with pytest.raises(
        ConfigError, match=r"label_swap\.groups: cannot draw 3 permutations of 2 items"
    ):
        transform(two_classes, "label_swap", groups=3, swaps=1)
    assert transform(two_classes, "label_swap", groups=2).group_ids["label_swap"].sum() == 4
    for seed in range(8):  # without identity_first no group keeps the original labels
        swapped = transform(two_classes, "label_swap", seed, groups=1, identity_first=False)
        assert all(
            torch.equal(c.train.y, 1 - o.train.y)
            for c, o in zip(swapped.clients, two_classes.clients, strict=True)
        )
