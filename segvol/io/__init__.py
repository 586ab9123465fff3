"""Image files in and out: readers (NIfTI, NRRD, MHA, DICOM series), canonical orientation, atomic writes."""
