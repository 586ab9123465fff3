"""Our multi-channel labels <-> one label map, for models that predict one class per voxel.

A store's `labels` are binary channels that may overlap (a tumour inside its organ). A label map
keeps the smaller structure where two overlap (channels painted largest first) and remembers which
categories lie inside which, so that an organ's mask gets its lesions back at prediction time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NESTED_FRACTION = 0.95  # a category lies inside another when this share of its voxels does


@dataclass
class LabelMap:
    """categories: channel order of the store; values: category -> label value (1..C, 0 = background);
    contains: category -> categories whose voxels lie inside it (painted over it in the map)."""

    categories: list[str]
    values: dict[str, int]
    contains: dict[str, list[str]] = field(default_factory=dict)

    def paint_order(self) -> list[int]:
        return sorted(range(len(self.categories)), key=lambda c: self.values[self.categories[c]])

    def to_label_map(self, labels: np.ndarray) -> np.ndarray:
        """(C, D, H, W) binary -> (D, H, W) uint8/uint16 label map (later values painted over earlier)."""
        dtype = np.uint8 if len(self.categories) < 255 else np.uint16
        label_map = np.zeros(labels.shape[1:], dtype)
        for channel in self.paint_order():
            label_map[labels[channel] > 0] = self.values[self.categories[channel]]
        return label_map

    def masks(self, label_map: np.ndarray) -> dict[str, np.ndarray]:
        """(D, H, W) label map -> category -> (D, H, W) bool, nested categories given back to their container."""
        own = {name: label_map == value for name, value in self.values.items()}
        masks = {}
        for name in self.categories:
            mask = own[name].copy()
            for inner in self.contains.get(name, []):
                mask |= own[inner]
            masks[name] = mask
        return masks

    def to_json(self) -> dict:
        return {"categories": self.categories, "values": self.values, "contains": self.contains}

    @classmethod
    def from_json(cls, payload: dict) -> LabelMap:
        return cls(
            list(payload["categories"]),
            {k: int(v) for k, v in payload["values"].items()},
            {k: list(v) for k, v in payload.get("contains", {}).items()},
        )


def plan_label_map(categories: list[str], label_volumes) -> LabelMap:
    """The label map of a training set: values by decreasing total volume (nested ones last).

    label_volumes: iterable of (C, D, H, W) binary arrays (the training cases).
    """
    count = len(categories)
    sizes = np.zeros(count)
    inside = np.zeros((count, count))  # inside[a, b] = voxels of b that are also in a
    for labels in label_volumes:
        flat = labels.reshape(count, -1) > 0
        sizes += flat.sum(1)
        for a in range(count):
            if flat[a].any():
                inside[a] += (flat & flat[a]).sum(1)
    order = sorted(range(count), key=lambda c: (-sizes[c], c))
    values = {categories[c]: rank + 1 for rank, c in enumerate(order)}
    contains = {}
    for a in range(count):
        nested = [
            categories[b]
            for b in range(count)
            if b != a and sizes[b] > 0 and sizes[b] < sizes[a] and inside[a, b] >= NESTED_FRACTION * sizes[b]
        ]
        if nested:
            contains[categories[a]] = nested
    return LabelMap(list(categories), values, contains)
