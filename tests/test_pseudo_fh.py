"""FH segmentation: the fast kernels against plain pure-Python reference implementations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from segvol.pseudo import unionfind
from segvol.pseudo.felzenszwalb import felzenszwalb_3d
from segvol.pseudo.graph import FULL_OFFSETS, SEGVOL_OFFSETS, build_graph, offsets_for


# ---------------------------------------------------------------- reference (obviously correct)
def reference_edges(volume, offsets):
    """[(weight, a, b)] in the canonical order: offset by offset, source voxels in C order."""
    depth, height, width = volume.shape
    edges = []
    for dd, dh, dw in offsets:
        for d, h, w in itertools.product(range(depth), range(height), range(width)):
            nd, nh, nw = d + dd, h + dh, w + dw
            if 0 <= nd < depth and 0 <= nh < height and 0 <= nw < width:
                weight = float(abs(volume[d, h, w] - volume[nd, nh, nw]))  # float32 arithmetic
                a = (d * height + h) * width + w
                b = (nd * height + nh) * width + nw
                edges.append((weight, a, b))
    return edges


class ReferenceSets:
    def __init__(self, n):
        self.parent = list(range(n))
        self.size = [1] * n
        self.internal = [0.0] * n

    def find(self, x):
        while self.parent[x] != x:
            x = self.parent[x]
        return x

    def join(self, a, b, weight=0.0):
        self.parent[b] = a
        self.size[a] += self.size[b]
        self.internal[a] = weight

    def labels(self, shape):
        roots = [self.find(x) for x in range(len(self.parent))]
        ids = {}
        return np.array([ids.setdefault(r, len(ids) + 1) for r in roots]).reshape(shape)


def reference_min_size_pass(sets, edges, min_size):
    for _, a, b in edges:
        ra, rb = sets.find(a), sets.find(b)
        if ra != rb and (sets.size[ra] < min_size or sets.size[rb] < min_size):
            sets.join(ra, rb)


def reference_segvol(volume, sigma, min_size, percentile=25.0):
    """The released algorithm, literally: sort, threshold pass, min-size pass, relabel."""
    smoothed = ndimage.gaussian_filter(volume.astype(np.float32), sigma) if sigma > 0 else volume.astype(np.float32)
    edges = sorted(reference_edges(smoothed, SEGVOL_OFFSETS), key=lambda edge: edge[0])
    threshold = np.percentile(np.array([w for w, _, _ in edges if w > 0], dtype=np.float32), percentile)
    sets = ReferenceSets(volume.size)
    for weight, a, b in edges:
        if weight < threshold:
            ra, rb = sets.find(a), sets.find(b)
            if ra != rb:
                sets.join(ra, rb)
    reference_min_size_pass(sets, edges, min_size)
    return sets.labels(volume.shape)


def reference_classic(volume, sigma, min_size, k, connectivity):
    smoothed = ndimage.gaussian_filter(volume.astype(np.float32), sigma) if sigma > 0 else volume.astype(np.float32)
    edges = sorted(reference_edges(smoothed, offsets_for("classic", connectivity)), key=lambda edge: edge[0])
    sets = ReferenceSets(volume.size)
    for weight, a, b in edges:
        ra, rb = sets.find(a), sets.find(b)
        if ra == rb:
            continue
        if weight <= min(sets.internal[ra] + k / sets.size[ra], sets.internal[rb] + k / sets.size[rb]):
            sets.join(ra, rb, weight)
    reference_min_size_pass(sets, edges, min_size)
    return sets.labels(volume.shape)


def same_partition(labels_a, labels_b):
    pairs = np.unique(np.stack([labels_a.ravel(), labels_b.ravel()]), axis=1)
    return pairs.shape[1] == np.unique(labels_a).size == np.unique(labels_b).size


def random_volume(seed, shape, levels=None):
    """Piecewise-constant random blocks plus a little noise: regions FH can find, distinct weights."""
    rng = np.random.default_rng(seed)
    coarse = rng.random(tuple(max(size // 3, 1) for size in shape))
    blocks = ndimage.zoom(coarse, [size / c for size, c in zip(shape, coarse.shape)], order=0)
    volume = (blocks + 0.05 * rng.random(shape)).astype(np.float32)
    if levels:
        volume = np.floor(volume * levels).astype(np.float32)  # many equal weights: ties
    return volume


# ---------------------------------------------------------------- equivalence
@pytest.mark.parametrize(
    "seed,shape,sigma,min_size",
    [
        (0, (5, 6, 7), 0.0, 12),
        (1, (6, 8, 7), 0.8, 25),
        (2, (4, 9, 9), 0.8, 40),
        (3, (7, 5, 6), 0.0, 1),
    ],
)
def test_segvol_matches_reference_distinct_weights(seed, shape, sigma, min_size):
    def distinct(volume):
        smoothed = ndimage.gaussian_filter(volume, sigma) if sigma else volume
        weights = build_graph(smoothed, SEGVOL_OFFSETS).weights
        return np.unique(weights).size == weights.size

    # float32 differences collide now and then; take the first seed without a tie
    volume = next(v for v in (random_volume(seed * 100 + i, shape) for i in range(20)) if distinct(v))
    fast = felzenszwalb_3d(volume, "segvol", sigma=sigma, min_size=min_size)
    slow = reference_segvol(volume, sigma, min_size)
    assert same_partition(fast, slow)
    assert 1 < fast.max() < volume.size  # a non-trivial partition was compared


@pytest.mark.parametrize("seed", [4, 5])
def test_segvol_matches_reference_with_ties(seed):
    volume = random_volume(seed, (6, 7, 8), levels=4)
    fast = felzenszwalb_3d(volume, "segvol", sigma=0.0, min_size=15)
    slow = reference_segvol(volume, 0.0, 15)
    assert np.array_equal(fast, slow)  # same tie order and same first-appearance numbering


@pytest.mark.parametrize(
    "seed,connectivity,k,sigma,min_size",
    [
        (6, 6, 0.3, 0.0, 1),
        (7, 6, 0.1, 0.8, 10),
        (8, 26, 0.5, 0.0, 5),
        (9, 26, 0.2, 0.8, 20),
    ],
)
def test_classic_matches_reference(seed, connectivity, k, sigma, min_size):
    volume = random_volume(seed, (5, 6, 7))
    fast = felzenszwalb_3d(volume, "classic", sigma=sigma, min_size=min_size, k=k, connectivity=connectivity)
    slow = reference_classic(volume, sigma, min_size, k, connectivity)
    assert same_partition(fast, slow)
    assert fast.max() > 1


def test_classic_matches_reference_with_ties():
    volume = random_volume(10, (5, 6, 7), levels=3)
    fast = felzenszwalb_3d(volume, "classic", sigma=0.0, min_size=3, k=0.7, connectivity=26)
    assert np.array_equal(fast, reference_classic(volume, 0.0, 3, 0.7, 26))


# ---------------------------------------------------------------- invariants
@pytest.mark.parametrize("criterion", ["segvol", "classic"])
def test_partition_invariants(criterion):
    volume = random_volume(11, (10, 12, 14))
    min_size = 30
    labels = felzenszwalb_3d(volume, criterion, sigma=0.8, min_size=min_size, k=0.5)
    ids = np.unique(labels)
    assert labels.dtype == np.int32 and labels.shape == volume.shape
    assert np.array_equal(ids, np.arange(1, ids.size + 1))  # every voxel in exactly one of 1..K
    # Each segment is connected under the criterion's own edges: components of the graph made of
    # intra-segment edges must be exactly the segments.
    source, target = build_graph(volume, offsets_for(criterion, 6)).endpoints()
    inside = labels.ravel()[source] == labels.ravel()[target]
    graph = coo_matrix((np.ones(inside.sum()), (source[inside], target[inside])), shape=(volume.size,) * 2)
    n_components, components = connected_components(graph, directed=False)
    assert n_components == ids.size
    assert same_partition(components.reshape(volume.shape), labels)
    assert np.bincount(labels.ravel())[1:].min() >= min_size  # the min-size pass leaves no small set


def test_segvol_diagonals_lie_in_the_H_W_plane():
    # Voxels on an (H, W) diagonal touch only through the in-plane diagonal edges; on a (D, H)
    # diagonal they touch through no segvol edge at all.
    plane = np.zeros((4, 6, 6), np.float32)
    for i in range(6):
        plane[1, i, i] = 1.0
    labels = felzenszwalb_3d(plane, "segvol", sigma=0.0, min_size=1)
    assert np.unique(labels[plane == 1]).size == 1
    across = np.zeros((6, 6, 4), np.float32)
    for i in range(6):
        across[i, i, 1] = 1.0
    labels = felzenszwalb_3d(across, "segvol", sigma=0.0, min_size=1)
    assert np.unique(labels[across == 1]).size == 6


def test_graph_edges_are_all_neighbour_pairs():
    shape = (3, 4, 5)
    for offsets, reach in [(FULL_OFFSETS, 3), (offsets_for("classic", 6), 1)]:
        source, target = build_graph(np.zeros(shape, np.float32), offsets).endpoints()
        found = {tuple(sorted(pair)) for pair in zip(source.tolist(), target.tolist())}
        assert len(found) == source.size  # no duplicate edges
        coords = list(itertools.product(*map(range, shape)))
        expected = {
            tuple(sorted((np.ravel_multi_index(p, shape), np.ravel_multi_index(q, shape))))
            for p in coords
            for q in coords
            if p != q and max(abs(a - b) for a, b in zip(p, q)) == 1 and sum(abs(a - b) for a, b in zip(p, q)) <= reach
        }
        assert found == {tuple(int(x) for x in pair) for pair in expected}


def test_radix_sort_equals_stable_argsort():
    rng = np.random.default_rng(12)
    weights = rng.integers(0, 5000, 20000).astype(np.float32) / 7  # many ties, wide exponent range
    weights[::7] = 0.0
    weights[::11] = rng.random(weights[::11].size).astype(np.float32) * 1e-30
    sources = np.arange(weights.size, dtype=np.int32)
    keys, sorted_sources, targets = unionfind.radix_sort_edges(weights.view(np.uint32), sources, sources * 2)
    expected = np.argsort(weights, kind="stable")
    assert np.array_equal(sorted_sources, expected)
    assert np.array_equal(targets, expected * 2)
    assert np.array_equal(keys.view(np.float32), weights[expected])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "volume,message",
    [
        (np.zeros((2, 3, 4, 5), np.float32), "3-D"),
        (np.zeros((0, 3, 4), np.float32), "empty"),
        (np.full((3, 4, 5), 0.5, np.float32), "constant"),
        (np.where(np.eye(4, dtype=bool)[None], np.nan, 1.0).astype(np.float32).repeat(2, 0), "NaN"),
    ],
)
def test_bad_volumes_raise(volume, message):
    with pytest.raises(ValueError, match=message):
        felzenszwalb_3d(volume)


def test_bad_settings_raise():
    volume = random_volume(13, (3, 4, 5))
    with pytest.raises(ValueError, match="unknown FH criterion"):
        felzenszwalb_3d(volume, "watershed")
    with pytest.raises(ValueError, match="connectivity"):
        felzenszwalb_3d(volume, "classic", connectivity=18)
