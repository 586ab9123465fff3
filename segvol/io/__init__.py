"""Image files in and out: readers (NIfTI, NRRD, MHA, DICOM series), canonical orientation, atomic writes.

from segvol.io import read_image, read_label, write_like, CanonicalImage
"""

from segvol.io.image import CanonicalImage, canonical_image, read_image, read_label, same_grid, write_like

__all__ = ["CanonicalImage", "canonical_image", "read_image", "read_label", "same_grid", "write_like"]
