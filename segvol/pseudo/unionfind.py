"""Compiled (numba) union-find passes over an `EdgeGraph`'s edges.

The kernels take the graph's arrays (see `graph.EdgeGraph`) and walk each edge type's source
region directly, so no endpoint list of the whole graph is ever materialised. Edge lists that a
sequential pass needs (ascending weight order) are built only for the edges that can matter and
sorted with a stable LSD radix sort on the float32 weight bits: the float32 bit pattern of a
non-negative number orders like the number, and a stable sort of lists built in edge-number order
breaks ties by edge number, exactly like `np.argsort(weights, kind="stable")`.

Union is by size with path compression. The partition never depends on which element becomes a
root, because every merge criterion only looks at set-level quantities (size, internal difference).
"""

from __future__ import annotations

import numpy as np
from numba import njit

RADIX_BITS = 11  # three passes cover a 32-bit key; 2048 counters stay in L1


@njit(cache=True, nogil=True)
def find(parent, node):
    root = node
    while parent[root] != root:
        root = parent[root]
    while parent[node] != root:
        parent[node], node = root, parent[node]
    return root


@njit(cache=True, nogil=True)
def union(parent, size, root_a, root_b):
    """Join two roots; returns the surviving root."""
    if size[root_a] < size[root_b]:
        root_a, root_b = root_b, root_a
    parent[root_b] = root_a
    size[root_a] += size[root_b]
    return root_a


@njit(cache=True, nogil=True)
def merge_below(parent, size, weights, threshold, dims, starts, region_shapes, linear_offsets, bases):
    """Join the ends of every edge with weight < threshold (order-free: a pure connectivity pass)."""
    for kind in range(bases.shape[0] - 1):
        edge = bases[kind]
        step = linear_offsets[kind]
        for i in range(region_shapes[kind, 0]):
            for j in range(region_shapes[kind, 1]):
                source = ((i + starts[kind, 0]) * dims[1] + (j + starts[kind, 1])) * dims[2] + starts[kind, 2]
                for _ in range(region_shapes[kind, 2]):
                    if weights[edge] < threshold:
                        root_a = find(parent, source)
                        root_b = find(parent, source + step)
                        if root_a != root_b:
                            union(parent, size, root_a, root_b)
                    edge += 1
                    source += 1


@njit(cache=True, nogil=True)
def flatten(parent):
    """Point every node straight at its root."""
    for node in range(parent.shape[0]):
        parent[node] = find(parent, node)


@njit(cache=True, nogil=True)
def edge_list(keys, roots, size, min_size, only_small, dims, starts, region_shapes, linear_offsets, bases):
    """(keys, sources, targets) of the chosen edges, in edge-number order.

    All edges when `only_small` is False. Otherwise only edges whose ends lie in different sets,
    at least one smaller than `min_size` (`roots` must be flat, see `flatten`): the only edges
    that can ever cause a min-size merge, since a set of min_size or more never shrinks and an
    edge inside one set stays inside it.
    """
    count = 0
    for fill in range(2):
        if fill == 1:
            chosen_keys = np.empty(count, dtype=keys.dtype)
            sources = np.empty(count, dtype=roots.dtype)
            targets = np.empty(count, dtype=roots.dtype)
            count = 0
        for kind in range(bases.shape[0] - 1):
            edge = bases[kind]
            step = linear_offsets[kind]
            for i in range(region_shapes[kind, 0]):
                for j in range(region_shapes[kind, 1]):
                    source = ((i + starts[kind, 0]) * dims[1] + (j + starts[kind, 1])) * dims[2] + starts[kind, 2]
                    for _ in range(region_shapes[kind, 2]):
                        keep = True
                        if only_small:
                            root_a = roots[source]
                            root_b = roots[source + step]
                            keep = root_a != root_b and (size[root_a] < min_size or size[root_b] < min_size)
                        if keep:
                            if fill == 1:
                                chosen_keys[count] = keys[edge]
                                sources[count] = source
                                targets[count] = source + step
                            count += 1
                        edge += 1
                        source += 1
    return chosen_keys, sources, targets


@njit(cache=True, nogil=True)
def radix_sort_edges(keys, sources, targets):
    """Stable ascending sort of uint32 `keys`, carrying `sources` and `targets` along (new arrays)."""
    n = keys.shape[0]
    buckets = 1 << RADIX_BITS
    mask = buckets - 1
    # ping-pong between two fresh buffers; the inputs are left untouched
    keys, sources, targets = keys.copy(), sources.copy(), targets.copy()
    keys_b = np.empty_like(keys)
    sources_b = np.empty_like(sources)
    targets_b = np.empty_like(targets)
    for shift in range(0, 32, RADIX_BITS):
        counts = np.zeros(buckets + 1, dtype=np.int64)
        for index in range(n):
            counts[((keys[index] >> shift) & mask) + 1] += 1
        if counts.max() == n:
            continue  # every key has the same digit: this pass would not move anything
        for bucket in range(buckets):
            counts[bucket + 1] += counts[bucket]
        for index in range(n):
            digit = (keys[index] >> shift) & mask
            position = counts[digit]
            counts[digit] = position + 1
            keys_b[position] = keys[index]
            sources_b[position] = sources[index]
            targets_b[position] = targets[index]
        keys, keys_b = keys_b, keys
        sources, sources_b = sources_b, sources
        targets, targets_b = targets_b, targets
    return keys, sources, targets


@njit(cache=True, nogil=True)
def merge_small(parent, size, sources, targets, min_size):
    """In list order, join the ends of an edge whenever either set is below min_size."""
    for index in range(sources.shape[0]):
        root_a = find(parent, sources[index])
        root_b = find(parent, targets[index])
        if root_a != root_b and (size[root_a] < min_size or size[root_b] < min_size):
            union(parent, size, root_a, root_b)


@njit(cache=True, nogil=True)
def merge_classic(parent, size, internal, weights, sources, targets, k):
    """FH 2004 over edges in ascending order: join when w <= min(Int(C) + k/|C|) of both sets.

    `internal[root]` is Int(C), the largest weight of the set's minimum spanning tree; with
    edges in ascending order that is the weight of the edge that made the set's last merge.
    """
    for index in range(sources.shape[0]):
        root_a = find(parent, sources[index])
        root_b = find(parent, targets[index])
        if root_a == root_b:
            continue
        weight = np.float64(weights[index])
        limit_a = internal[root_a] + k / size[root_a]
        limit_b = internal[root_b] + k / size[root_b]
        if weight <= min(limit_a, limit_b):
            root = union(parent, size, root_a, root_b)
            internal[root] = weight


@njit(cache=True, nogil=True)
def consecutive_labels(parent):
    """int32 labels 1..K, numbered by first appearance in C order."""
    n = parent.shape[0]
    ids = np.zeros(n, dtype=np.int32)
    labels = np.empty(n, dtype=np.int32)
    next_id = 0
    for node in range(n):
        root = find(parent, node)
        if ids[root] == 0:
            next_id += 1
            ids[root] = next_id
        labels[node] = ids[root]
    return labels
