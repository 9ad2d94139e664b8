"""The DICOM PS3.15 de-identification profile that the PHI gate and `fedward site deidentify` share.

The attribute table is DICOM PS3.15 Annex E, Table E.1-1 (Application Level Confidentiality Profile
Attributes), written as data: keyword -> (action of the Basic Profile, category). Compound actions of
the standard (X/Z, X/D, X/Z/D, Z/D) are resolved for what a site exports, MR images: the first letter,
except that dates and times follow the Retain Longitudinal Temporal Information with Modified Dates
Option (`MODIFIED_DATES`, code 113107) and series descriptors the Clean Descriptors Option
(`CLEAN_DESCRIPTORS`, code 113105, cleaned to the contrast vocabulary of `common.data.mri.sample`).
Actions: X remove, Z empty (or a dummy, e.g. a keyed pseudonym), D dummy value, U replace the UID
consistently, C clean.
"""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from fedward.common.data.mri.sample import contrast_name

# keyword: (Basic Profile action, category) -- PS3.15 Table E.1-1.
PROFILE: dict[str, tuple[str, str]] = {
    # people's names
    "PatientName": ("Z", "name"),
    "OtherPatientNames": ("X", "name"),
    "PatientBirthName": ("X", "name"),
    "PatientMotherBirthName": ("X", "name"),
    "ReferringPhysicianName": ("Z", "name"),
    "ReferringPhysicianIdentificationSequence": ("X", "name"),
    "PerformingPhysicianName": ("X", "name"),
    "PerformingPhysicianIdentificationSequence": ("X", "name"),
    "OperatorsName": ("X", "name"),
    "OperatorIdentificationSequence": ("X", "name"),
    "PhysiciansOfRecord": ("X", "name"),
    "PhysiciansOfRecordIdentificationSequence": ("X", "name"),
    "NameOfPhysiciansReadingStudy": ("X", "name"),
    "PhysiciansReadingStudyIdentificationSequence": ("X", "name"),
    "RequestingPhysician": ("X", "name"),
    "ConsultingPhysicianName": ("X", "name"),
    "ScheduledPerformingPhysicianName": ("X", "name"),
    "ScheduledPerformingPhysicianIdentificationSequence": ("X", "name"),
    "HumanPerformerName": ("X", "name"),
    "ActualHumanPerformersSequence": ("X", "name"),
    "ScheduledHumanPerformersSequence": ("X", "name"),
    "OrderEnteredBy": ("X", "name"),
    "ResponsiblePerson": ("X", "name"),
    "ReviewerName": ("X", "name"),
    "ContentCreatorName": ("Z", "name"),
    "VerifyingObserverName": ("D", "name"),
    "PersonName": ("D", "name"),
    "ParticipantSequence": ("X", "name"),
    "AuthorObserverSequence": ("X", "name"),
    "PersonIdentificationCodeSequence": ("D", "name"),
    # identifiers
    "PatientID": ("Z", "id"),
    "IssuerOfPatientID": ("X", "id"),
    "OtherPatientIDs": ("X", "id"),
    "OtherPatientIDsSequence": ("X", "id"),
    "MedicalRecordLocator": ("X", "id"),
    "AccessionNumber": ("Z", "id"),
    "StudyID": ("Z", "id"),
    "StudyIDIssuer": ("X", "id"),
    "AdmissionID": ("X", "id"),
    "IssuerOfAdmissionID": ("X", "id"),
    "ServiceEpisodeID": ("X", "id"),
    "IssuerOfServiceEpisodeID": ("X", "id"),
    "PerformedProcedureStepID": ("X", "id"),
    "RequestedProcedureID": ("X", "id"),
    "PlacerOrderNumberImagingServiceRequest": ("Z", "id"),
    "FillerOrderNumberImagingServiceRequest": ("Z", "id"),
    "InsurancePlanIdentification": ("X", "id"),
    "PatientInsurancePlanCodeSequence": ("X", "id"),
    "ReferencedPatientSequence": ("X", "id"),
    "ReferencedPatientAliasSequence": ("X", "id"),
    "ReferencedStudySequence": ("X", "id"),
    "ReferencedPerformedProcedureStepSequence": ("X", "id"),
    "RequestAttributesSequence": ("X", "id"),
    "OriginalAttributesSequence": ("X", "id"),
    "ModifiedAttributesSequence": ("X", "id"),
    # dates and times
    "PatientBirthDate": ("Z", "date"),
    "PatientBirthTime": ("X", "date"),
    "StudyDate": ("Z", "date"),
    "StudyTime": ("Z", "date"),
    "SeriesDate": ("X", "date"),
    "SeriesTime": ("X", "date"),
    "AcquisitionDate": ("X", "date"),
    "AcquisitionTime": ("X", "date"),
    "AcquisitionDateTime": ("X", "date"),
    "ContentDate": ("Z", "date"),
    "ContentTime": ("Z", "date"),
    "InstanceCreationDate": ("X", "date"),
    "InstanceCreationTime": ("X", "date"),
    "OverlayDate": ("X", "date"),
    "OverlayTime": ("X", "date"),
    "CurveDate": ("X", "date"),
    "CurveTime": ("X", "date"),
    "AdmittingDate": ("X", "date"),
    "AdmittingTime": ("X", "date"),
    "PerformedProcedureStepStartDate": ("X", "date"),
    "PerformedProcedureStepStartTime": ("X", "date"),
    "PerformedProcedureStepEndDate": ("X", "date"),
    "PerformedProcedureStepEndTime": ("X", "date"),
    "ScheduledProcedureStepStartDate": ("X", "date"),
    "ScheduledProcedureStepStartTime": ("X", "date"),
    "ScheduledProcedureStepEndDate": ("X", "date"),
    "ScheduledProcedureStepEndTime": ("X", "date"),
    "LastMenstrualDate": ("X", "date"),
    "TimezoneOffsetFromUTC": ("X", "date"),
    # UIDs
    "StudyInstanceUID": ("U", "uid"),
    "SeriesInstanceUID": ("U", "uid"),
    "SOPInstanceUID": ("U", "uid"),
    "MediaStorageSOPInstanceUID": ("U", "uid"),
    "FrameOfReferenceUID": ("U", "uid"),
    "SynchronizationFrameOfReferenceUID": ("U", "uid"),
    "ReferencedFrameOfReferenceUID": ("U", "uid"),
    "RelatedFrameOfReferenceUID": ("U", "uid"),
    "ReferencedSOPInstanceUID": ("U", "uid"),
    "ReferencedSOPInstanceUIDInFile": ("U", "uid"),
    "InstanceCreatorUID": ("U", "uid"),
    "IrradiationEventUID": ("U", "uid"),
    "DeviceUID": ("U", "uid"),
    "ConcatenationUID": ("U", "uid"),
    "DimensionOrganizationUID": ("U", "uid"),
    "StorageMediaFileSetUID": ("U", "uid"),
    "TransactionUID": ("U", "uid"),
    "FiducialUID": ("U", "uid"),
    "DoseReferenceUID": ("U", "uid"),
    "CreatorVersionUID": ("U", "uid"),
    "UID": ("U", "uid"),
    "PaletteColorLookupTableUID": ("U", "uid"),
    "LargePaletteColorLookupTableUID": ("U", "uid"),
    "ContextGroupExtensionCreatorUID": ("U", "uid"),
    "TemplateExtensionOrganizationUID": ("U", "uid"),
    "TemplateExtensionCreatorUID": ("U", "uid"),
    "DigitalSignatureUID": ("X", "uid"),
    # addresses and telephone numbers
    "PatientAddress": ("X", "contact"),
    "PatientTelephoneNumbers": ("X", "contact"),
    "ReferringPhysicianAddress": ("X", "contact"),
    "ReferringPhysicianTelephoneNumbers": ("X", "contact"),
    "PersonAddress": ("X", "contact"),
    "PersonTelephoneNumbers": ("X", "contact"),
    "OrderCallbackPhoneNumber": ("X", "contact"),
    "RegionOfResidence": ("X", "contact"),
    "CountryOfResidence": ("X", "contact"),
    # institutions and places
    "InstitutionName": ("X", "institution"),
    "InstitutionAddress": ("X", "institution"),
    "InstitutionCodeSequence": ("X", "institution"),
    "InstitutionalDepartmentName": ("X", "institution"),
    "RequestingService": ("X", "institution"),
    "ResponsibleOrganization": ("X", "institution"),
    "CustodialOrganizationSequence": ("X", "institution"),
    "VerifyingOrganization": ("X", "institution"),
    "PerformedLocation": ("X", "institution"),
    "CurrentPatientLocation": ("X", "institution"),
    "PatientInstitutionResidence": ("X", "institution"),
    "ScheduledPatientInstitutionResidence": ("X", "institution"),
    "ScheduledStudyLocation": ("X", "institution"),
    "ScheduledStudyLocationAETitle": ("X", "institution"),
    "RequestedProcedureLocation": ("X", "institution"),
    "ScheduledProcedureStepLocation": ("X", "institution"),
    # devices
    "StationName": ("X", "device"),
    "DeviceSerialNumber": ("X", "device"),
    "DetectorID": ("X", "device"),
    "GantryID": ("X", "device"),
    "GeneratorID": ("X", "device"),
    "CassetteID": ("X", "device"),
    "PlateID": ("X", "device"),
    "PerformedStationName": ("X", "device"),
    "PerformedStationAETitle": ("X", "device"),
    "ScheduledStationName": ("X", "device"),
    "ScheduledStationAETitle": ("X", "device"),
    "ModifyingDeviceID": ("X", "device"),
    "ModifyingDeviceManufacturer": ("X", "device"),
    # patient characteristics
    "PatientSex": ("Z", "demographic"),
    "PatientAge": ("X", "demographic"),
    "PatientSize": ("X", "demographic"),
    "PatientWeight": ("X", "demographic"),
    "EthnicGroup": ("X", "demographic"),
    "Occupation": ("X", "demographic"),
    "MilitaryRank": ("X", "demographic"),
    "BranchOfService": ("X", "demographic"),
    "PatientReligiousPreference": ("X", "demographic"),
    "SmokingStatus": ("X", "demographic"),
    "PregnancyStatus": ("X", "demographic"),
    "MedicalAlerts": ("X", "demographic"),
    "Allergies": ("X", "demographic"),
    "SpecialNeeds": ("X", "demographic"),
    "PatientState": ("X", "demographic"),
    "PatientSexNeutered": ("X", "demographic"),
    # free text and descriptions
    "StudyDescription": ("X", "free-text"),
    "SeriesDescription": ("X", "free-text"),
    "ProtocolName": ("X", "free-text"),
    "ImageComments": ("X", "free-text"),
    "AdditionalPatientHistory": ("X", "free-text"),
    "PatientComments": ("X", "free-text"),
    "StudyComments": ("X", "free-text"),
    "VisitComments": ("X", "free-text"),
    "IdentifyingComments": ("X", "free-text"),
    "FrameComments": ("X", "free-text"),
    "ImagePresentationComments": ("X", "free-text"),
    "AcquisitionComments": ("X", "free-text"),
    "DerivationDescription": ("X", "free-text"),
    "ReasonForStudy": ("X", "free-text"),
    "ReasonForTheImagingServiceRequest": ("X", "free-text"),
    "RequestedProcedureDescription": ("X", "free-text"),
    "RequestedProcedureComments": ("X", "free-text"),
    "ImagingServiceRequestComments": ("X", "free-text"),
    "PerformedProcedureStepDescription": ("X", "free-text"),
    "CommentsOnThePerformedProcedureStep": ("X", "free-text"),
    "ScheduledProcedureStepDescription": ("X", "free-text"),
    "AdmittingDiagnosesDescription": ("X", "free-text"),
    "AdmittingDiagnosesCodeSequence": ("X", "free-text"),
    "DischargeDiagnosisDescription": ("X", "free-text"),
    "ServiceEpisodeDescription": ("X", "free-text"),
    "AcquisitionProtocolDescription": ("X", "free-text"),
    "AcquisitionDeviceProcessingDescription": ("X", "free-text"),
    "ContributionDescription": ("X", "free-text"),
    "ModifiedImageDescription": ("X", "free-text"),
    "ContrastBolusAgent": ("Z", "free-text"),
    "RequestedContrastAgent": ("X", "free-text"),
    "PreMedication": ("X", "free-text"),
    "TextString": ("X", "free-text"),
    "TextComments": ("X", "free-text"),
    "ContentSequence": ("X", "free-text"),
    "AcquisitionContextSequence": ("X", "free-text"),
    # embedded images, signatures
    "IconImageSequence": ("X", "graphics"),
    "DigitalSignaturesSequence": ("X", "other"),
    "MAC": ("X", "other"),
    "DataSetTrailingPadding": ("X", "other"),
}

# Dates and times kept, shifted per patient, under the Modified Dates Option (113107).
MODIFIED_DATES = frozenset(k for k, (_, category) in PROFILE.items() if category == "date") - {
    "PatientBirthDate",
    "PatientBirthTime",
    "TimezoneOffsetFromUTC",
    "LastMenstrualDate",
}
# Descriptors kept when they name a contrast (Clean Descriptors Option, 113105).
CLEAN_DESCRIPTORS = frozenset({"SeriesDescription", "ProtocolName"})
FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
DATE_VRS = frozenset({"DA", "DT"})
MODIFIED_DATES_CODE = "113107"


def is_overlay_or_curve(element: DataElement) -> bool:
    """Overlay (60xx) and curve (50xx) data or comments: removed by the Basic Profile."""
    group = element.tag.group
    return group % 2 == 0 and (0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF)


def is_clean_descriptor(value: object) -> bool:
    """True when a descriptor is empty or exactly one contrast name (t1, T1-Gd, FLAIR, ...)."""
    text = str(value or "").strip()
    return not text or contrast_name(text) is not None


def identity_removed(ds: Dataset) -> bool:
    """PatientIdentityRemoved is YES."""
    return str(ds.get("PatientIdentityRemoved", "")).strip().upper() == "YES"


def dates_modified(ds: Dataset) -> bool:
    """The file declares the Modified Dates Option (shifted dates are then allowed)."""
    if str(ds.get("LongitudinalTemporalInformationModified", "")).strip().upper() == "MODIFIED":
        return True
    codes = ds.get("DeidentificationMethodCodeSequence") or []
    return any(str(item.get("CodeValue", "")) == MODIFIED_DATES_CODE for item in codes)
