"""DICOM-SEG output: round-trips through highdicom/pydicom onto the source series' slices."""

import numpy as np
import pydicom
import pytest

from segvol.infer.predict import predict_file
from segvol.io import read_image, read_label
from segvol.io.readers import dicom_series_files
from tests.stand_in_models import BoxModel
from tests.test_predict import liver_box_in_file_indices

hd = pytest.importorskip("highdicom")


def test_predict_dicom_seg_round_trips_onto_the_source_slices(shared_data, tmp_path):
    root = shared_data / "totalsegmentator" / "ct_dicom_series"
    image = read_image(root / "dicom")
    label = read_label(root / "example_seg_dicom.nii.gz", image)
    liver = liver_box_in_file_indices(image, label).tolist()
    spleen = liver.copy()
    spleen[:3] = [max(v - 30, 0) for v in liver[:3]]  # overlapping second box: a different segment
    records = [{"name": "liver", "box": liver}, {"name": "empty", "text": "nothing"}, {"name": "other", "box": spleen}]
    out = tmp_path / "seg.nii.gz"
    manifest = predict_file(BoxModel((8, 64, 64)), root / "dicom", out, records, mode="window", dicom_seg=True)
    assert "seg.seg.dcm" in manifest["outputs"]

    labels = np.asarray(__import__("nibabel").load(str(out)).dataobj)  # (columns, rows, slices)
    seg = hd.seg.segread(str(tmp_path / "seg.seg.dcm"))
    names = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    assert sorted(names.values()) == ["liver", "other"]  # the empty category is left out
    _, files = dicom_series_files(root / "dicom")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uids = [s.SOPInstanceUID or s.file_meta.MediaStorageSOPInstanceUID for s in sources]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=sorted(names), combine_segments=True, relabel=False
    )
    assert pixels.shape == (len(files), *labels.shape[1::-1])
    for number, name in names.items():
        value = 1 + ["liver", "empty", "other"].index(name)
        np.testing.assert_array_equal(pixels == number, (labels == value).transpose(2, 1, 0))
    # and every frame sits at its source slice's position
    dataset = pydicom.dcmread(str(tmp_path / "seg.seg.dcm"))
    by_uid = {uid: s for uid, s in zip(uids, sources)}
    for frame in dataset.PerFrameFunctionalGroupsSequence:
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position], [float(v) for v in by_uid[reference].ImagePositionPatient], atol=1e-3
        )


def test_dicom_seg_needs_a_dicom_input(tmp_path):
    from tests.test_predict import write_phantom

    write_phantom(tmp_path / "ct.nii.gz")
    with pytest.raises(ValueError, match="needs a DICOM series folder"):
        predict_file(
            BoxModel((8, 32, 32)),
            tmp_path / "ct.nii.gz",
            tmp_path / "s.nii.gz",
            [{"box": [1, 1, 1, 5, 5, 5]}],
            dicom_seg=True,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
