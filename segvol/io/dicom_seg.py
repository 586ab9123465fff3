"""DICOM Segmentation output (highdicom) for predictions on a DICOM series.

The label map is split into one binary segment per category and stored frame by frame on the
source slices, each frame referencing its source instance, so viewers (OHIF, 3D Slicer, PACS)
overlay it on the series it came from. Frame k is source slice k in the order of
`segvol.io.readers.dicom_series_files` (by position along the slice normal), i.e. the same
order as the k index of the image `read_image` returned.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segvol.io.atomic import atomic_path


def write_dicom_seg(
    labels_dhw: np.ndarray, image, series_folder: str | os.PathLike, names: list[str], out_path: str | os.PathLike
) -> Path:
    """Write the canonical label map (0 background, k+1 = ``names[k]``) as a DICOM-SEG, atomically.

    ``image`` is the `CanonicalImage` read from ``series_folder``.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from segvol import __version__
    from segvol.io.readers import dicom_series_files

    out_path = Path(out_path)
    _, files = dicom_series_files(Path(series_folder))
    labels_ijk = image.to_original(np.asarray(labels_dhw))  # (columns, rows, slices) as ITK reads them
    if labels_ijk.shape[2] != len(files):
        raise ValueError(
            f"{series_folder}: {len(files)} DICOM files but the label map has {labels_ijk.shape[2]} slices"
        )
    try:
        sources = [pydicom.dcmread(f) for f in files]
    except Exception as error:  # pydicom raises many types for broken files
        raise ValueError(f"{series_folder}: cannot read the DICOM files for the segmentation ({error})") from None
    for source in sources:  # anonymisers sometimes blank these; the file meta still has them
        meta = getattr(source, "file_meta", None)
        if not source.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            source.SOPClassUID = meta.MediaStorageSOPClassUID
        if not source.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            source.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    frames = np.ascontiguousarray(labels_ijk.transpose(2, 1, 0))  # (slices, rows, columns)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="SegVol", version=__version__, family=codes.DCM.ArtificialIntelligence
    )
    present = [k + 1 for k in range(len(names)) if np.any(frames == k + 1)]
    if not present:
        raise ValueError(f"{out_path}: every category is empty; a DICOM Segmentation needs at least one segment")
    # Segment numbers must run 1..n: empty categories are left out and the rest renumbered.
    remap = np.zeros(len(names) + 1, dtype=np.uint8)
    descriptions = []
    for number, value in enumerate(present, 1):
        remap[value] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=names[value - 1][:64],
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Organ,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=remap[frames],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="segvol",
        manufacturer_model_name="SegVol",
        software_versions=__version__,
        device_serial_number="0",
        series_description="SegVol segmentation",
    )
    with atomic_path(out_path) as temporary:
        segmentation.save_as(str(temporary))
    return out_path
