"""Brain MRI site data: DICOM series, BraTS-style NIfTI cases and 2D image folders."""
