"""DICOM tooling of a site, apart from the site runtime: what hospital IT runs on a folder before training.

- `profile`: the PS3.15 Annex E de-identification profile (Table E.1-1 as data, with the Clean Descriptors
  and Modified Dates options) that the gate and de-identification share.
- `gate`: the PHI gate (`check_folder`, `gate_site`): does a site folder still carry PHI?
- `text_rules`: PHI rules for text outside DICOM headers (folder and file names, metadata text).
- `media`: PHI in NIfTI headers and image text metadata.
- `deidentify`: `fedward site deidentify IN OUT`, a de-identified copy of a DICOM folder.

The sub-modules are imported by name (`from fedward.client.dicom.gate import check_folder`); this file imports
none of them, so that pydicom loads only where DICOM is read.
"""
