"""Zoom-in encoder passes per category: ours vs the released loop vs our former fixed lattice.

For each organ of a real CT (`../shared/data/totalsegmentator/abdomen_ct_3mm`, silver labels) or,
without it, of a synthetic volume, the ROI is the organ's bounding box in the foreground crop
(what a perfect zoom-out pass gives). Counts, with the base model's window (32, 256, 256):
- release: its ROI grown to the window where smaller, then MONAI's 0.5-overlap sliding window
  over the ROI (the released inference code);
- lattice: the fixed 0.5-overlap lattice of the crop (one position per axis where one holds
  the ROI, else all meeting it) -- our former rule;
- ours: `segvol.infer.zoom.roi_windows`.
Also the distinct windows for all categories at once (one encoder pass each) vs the release's sum.

    python benchmarks/bench_windows.py [--window 32 256 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from segvol.infer.windows import window_lattice
from segvol.infer.zoom import roi_windows

ORGANS = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "right adrenal gland",
    9: "left adrenal gland",
    52: "aorta",
    63: "inferior vena cava",
    21: "urinary bladder",
    22: "prostate",
    19: "duodenum",
    15: "esophagus",
    20: "colon",
}


def release_count(roi, window, overlap=0.5):
    count = 1
    for axis in range(3):
        extent, size = roi[axis + 3] - roi[axis] + 1, window[axis]
        if extent > size:
            stride = max(int(size * (1 - overlap)), 1)
            count *= -(-(extent - size) // stride) + 1
    return count


def lattice_count(crop_shape, roi, window):
    lattice = window_lattice(crop_shape, window, 0.5)
    count = 1
    for axis in range(3):
        starts = sorted({w.start[axis] for w in lattice})
        lo, hi = roi[axis], roi[axis + 3]
        holding = [s for s in starts if s <= lo and hi < s + window[axis]]
        count *= 1 if holding else len([s for s in starts if s <= hi and lo < s + window[axis]])
    return count


def cases():
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator" / "abdomen_ct_3mm"
    if (root / "example_ct.nii.gz").exists():
        from segvol.io import read_image, read_label
        from segvol.io.intensity import foreground_normalize

        image = read_image(root / "example_ct.nii.gz")
        label = read_label(root / "example_seg_fast_force_split.nii.gz", image)
        return "abdomen_ct_3mm (real CT, silver labels)", foreground_normalize(image.array), label.array
    rng = np.random.default_rng(0)
    shape = (300, 512, 512)
    volume = np.zeros(shape, np.float32)
    volume[10:-10, 40:-40, 40:-40] = 0.5
    labels = np.zeros(shape, np.int16)
    for value in ORGANS:
        centre = rng.integers([40, 120, 120], [260, 390, 390])
        half = rng.integers([5, 15, 15], [60, 90, 90])
        labels[tuple(slice(max(c - h, 10), c + h) for c, h in zip(centre, half))] = value
    return "synthetic 300x512x512", volume, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, nargs=3, default=(32, 256, 256))
    args = parser.parse_args()
    window = tuple(args.window)
    name, volume, labels = cases()
    body = np.argwhere(volume > 0)
    crop = np.concatenate([body.min(axis=0), body.max(axis=0)])
    crop_shape = tuple(int(v) for v in crop[3:] - crop[:3] + 1)
    print(f"{name}: canonical {volume.shape}, foreground crop {crop_shape}, window {window}")
    print(f"{'category':22s} {'release':>7s} {'lattice':>7s} {'ours':>5s}")
    release_total, union = 0, set()
    worse = 0
    for value, organ in ORGANS.items():
        voxels = np.argwhere(labels == value)
        if len(voxels) == 0:
            continue
        roi = np.concatenate([voxels.min(axis=0), voxels.max(axis=0)]) - np.tile(crop[:3], 2)
        ours = roi_windows(crop_shape, window, 0.5, roi)
        release = release_count(roi, window)
        release_total += release
        union.update(ours)
        worse += len(ours) > release
        print(f"{organ:22s} {release:7d} {lattice_count(crop_shape, roi, window):7d} {len(ours):5d}")
    print(f"categories with more passes than the release: {worse}")
    print(
        f"all categories at once: release {release_total} encoder passes, ours {len(union)} distinct windows "
        f"(ratio {release_total / max(len(union), 1):.2f}); plus one zoom-out pass each (release) vs one in all (ours)"
    )


if __name__ == "__main__":
    main()
