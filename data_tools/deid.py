"""Pseudonymous identifiers and DICOM de-identification for everything that leaves the tool.

Pseudonymous ids
----------------
A case is named ``case-<10 hex>``: an HMAC-SHA256 of a *source key* (the case folder's
resolved path, or a study UID) under a user key.  The same source and key always give the
same id, so results can be merged across runs; without the key the id cannot be traced back.
The key comes from the ``DISCOVERY_ID_KEY`` environment variable, or a documented default
that is fine for synthetic data and must be replaced for real patients.  They are made in
:mod:`data_tools.pseudonyms` (standard library only, so naming a case does not import
pydicom) and re-exported here.

De-identified DICOM copies
--------------------------
:func:`deidentify_dataset` returns a de-identified *copy* of a dataset (the caller's dataset is
never modified), following the DICOM PS3.15 Annex E Basic Application Level Confidentiality
Profile for the attributes that occur in the CT, SEG and RTSTRUCT objects this tool reads and
writes.  :data:`BASIC_PROFILE_ACTIONS` is a **subset** of PS3.15 Table E.1-1 (keyword ->
action); attributes not listed there are kept.  The rules:

* Actions: ``X`` remove; ``Z`` replace by an empty value (sequences become empty);
  ``D`` replace by a non-empty dummy (:data:`DUMMY_VALUES` by VR); ``K`` keep (sequences are
  still walked, so the UIDs inside them are replaced); ``U`` replace the UID (below).  Where the
  standard leaves a choice (``X/Z``, ``Z/D``, ``X/Z/D``) the weakest action that keeps CT Image,
  Segmentation and RT Structure Set objects valid is used; :data:`TYPE1_OVERRIDES` switches
  ``Content Date/Time`` and ``Device Serial Number`` to ``D`` in Segmentation objects, where
  they are Type 1.
* Patient ID is a ``D`` with a *keyed* dummy: ``pseudonymous_id(original, key=key,
  prefix='patient')``, so the series of one patient stay together under one key.
  Patient's Name is emptied (``Z``).
* UIDs: every listed ``U`` attribute and every other ``UI`` element (at any depth) whose value
  is an instance UID is replaced by ``2.25.<int>``, where ``<int>`` is the first 120 bits of
  ``HMAC-SHA256(key, "uid:" + uid)`` read as an unsigned big-endian integer (at most 42
  characters).  The same input UID always gives the same output under one key, so a study's
  instances, series, frame of reference and the references between them (RTSTRUCT contour
  image references, SEG source image references) stay coherent.  Class-like UIDs (SOP Class,
  Transfer Syntax, coding scheme ... see :data:`KEPT_UID_KEYWORDS`) and all DICOM-defined UIDs
  (root ``1.2.840.10008.``) are kept.  The ``"uid:"`` prefix keeps these UIDs independent of
  the ``case-``/``patient-`` ids made from the same strings.
* The actions apply at every depth: the walk recurses into the items of kept sequences.
* Private elements (odd groups, private creators included) are removed unless
  ``keep_private=True`` (they then stay untouched, and may carry identifiers).
* The file meta information is rebuilt from the SOP Class UID, the replaced SOP Instance UID
  and the transfer syntax (source application titles and implementation names go), and the
  128-byte preamble is zeroed.
* Added: Patient Identity Removed (0012,0062) ``YES``, De-identification Method (0012,0063),
  De-identification Method Code Sequence (0012,0064) with (113100, DCM, "Basic Application
  Confidentiality Profile").
* Pixel data are not touched: the profile requires that no identification is burned into the
  pixels.  :func:`burned_in_annotation_risk` says when an image must not be shown as a key
  image for that reason.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging

from pydicom.dataelem import empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from .pseudonyms import DEFAULT_KEY_NOTICE, id_key, pseudonymous_id

__all__ = [
    "BASIC_PROFILE_ACTIONS",
    "DEFAULT_KEY_NOTICE",
    "burned_in_annotation_risk",
    "deidentify_dataset",
    "pseudonymous_id",
]

logger = logging.getLogger(__name__)

# -- PS3.15 Annex E, Basic Application Level Confidentiality Profile (subset) ----------------

#: keyword -> action for the attributes handled, a subset of PS3.15 Table E.1-1.  The comment
#: gives the table's action where this module picks one of several.
BASIC_PROFILE_ACTIONS: dict[str, str] = {
    # Patient
    "PatientName": "Z",
    "PatientID": "D",                       # table: Z; keyed dummy (pseudonymous_id, 'patient')
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "PatientSex": "Z",
    "PatientAge": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "PatientComments": "X",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "PatientBirthName": "X",
    "PatientMotherBirthName": "X",
    "IssuerOfPatientID": "X",
    "EthnicGroup": "X",
    "Occupation": "X",
    "AdditionalPatientHistory": "X",
    "MedicalRecordLocator": "X",
    "ReferencedPatientSequence": "X",
    # Study, series, request
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "SeriesDate": "X",                      # X/D
    "SeriesTime": "X",                      # X/D
    "AcquisitionDate": "X",                 # X/Z
    "AcquisitionTime": "X",                 # X/Z
    "AcquisitionDateTime": "X",             # X/D
    "ContentDate": "Z",                     # Z/D (D in SEG, see TYPE1_OVERRIDES)
    "ContentTime": "Z",                     # Z/D
    "InstanceCreationDate": "X",            # X/D
    "InstanceCreationTime": "X",            # X/Z/D
    "TimezoneOffsetFromUTC": "X",
    "StudyDescription": "X",
    "SeriesDescription": "X",
    "ImageComments": "X",
    "DerivationDescription": "X",
    "ProtocolName": "X",                    # X/D
    "RequestAttributesSequence": "X",
    "ReferencedStudySequence": "X",         # X/Z
    "ReferencedPerformedProcedureStepSequence": "X",   # X/Z/D
    "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepID": "X",
    "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X",
    "RequestedProcedureDescription": "X",   # X/Z
    "ContrastBolusAgent": "Z",              # Z/D
    # People and places
    "ReferringPhysicianName": "Z",
    "PerformingPhysicianName": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "OperatorsName": "X",                   # X/Z/D
    "PhysiciansOfRecord": "X",
    "RequestingPhysician": "X",
    "ContentCreatorName": "Z",
    "InstitutionName": "X",                 # X/Z/D
    "InstitutionAddress": "X",
    "InstitutionalDepartmentName": "X",
    "StationName": "X",                     # X/Z/D
    "DeviceSerialNumber": "X",              # X/Z/D (D in SEG, see TYPE1_OVERRIDES)
    "SourceApplicationEntityTitle": "X",    # file meta
    # RT Structure Set
    "StructureSetLabel": "D",
    "StructureSetName": "X",
    "StructureSetDescription": "X",
    "StructureSetDate": "Z",                # Type 2 in the Structure Set module
    "StructureSetTime": "Z",
    "ROIInterpreter": "Z",
    "ROIGenerationDescription": "X",
    # Clinical trial, visit, request and other people (reported missing by the DICOM export's
    # review; X or Z in Table E.1-1, the weaker one where Type 2 in common IODs)
    "ClinicalTrialSubjectID": "Z",
    "ClinicalTrialSponsorName": "Z",
    "ClinicalTrialSiteName": "Z",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    "MedicalAlerts": "X",
    "Allergies": "X",
    "PregnancyStatus": "X",
    "LastMenstrualDate": "X",
    "SmokingStatus": "X",
    "PatientState": "X",
    "PatientReligiousPreference": "X",
    "MilitaryRank": "X",
    "BranchOfService": "X",
    "CountryOfResidence": "X",
    "RegionOfResidence": "X",
    "AdmittingDiagnosesDescription": "X",
    "AdmissionID": "X",
    "ServiceEpisodeID": "X",
    "VisitComments": "X",
    "StudyComments": "X",
    "ReasonForStudy": "X",
    "RequestingService": "X",
    "ScheduledProcedureStepDescription": "X",
    "PlacerOrderNumberImagingServiceRequest": "X",
    "FillerOrderNumberImagingServiceRequest": "X",
    "ConsultingPhysicianName": "X",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X",
    "CurrentPatientLocation": "X",
    "PerformedStationName": "X",
    "PerformedLocation": "X",
    "PersonName": "X",
    "VerifyingObserverName": "X",
    "AcquisitionComments": "X",
    "DetectorID": "X",
    "PlateID": "X",
    "CassetteID": "X",
    "GantryID": "X",
    "OriginalAttributesSequence": "X",
    "InstitutionCodeSequence": "X",
    "IssuerOfAccessionNumberSequence": "X",
    "PatientInsurancePlanCodeSequence": "X",
    "AuthorObserverSequence": "X",
    "ParticipantSequence": "X",
    # Overlays (may hold burned-in style annotations)
    "OverlayData": "X",
    "OverlayComments": "X",
    "DataSetTrailingPadding": "X",          # may hold stale bytes
    # References: X/Z/U* in the table; kept with the contained UIDs replaced (the U* branch)
    "ReferencedImageSequence": "K",
    "SourceImageSequence": "K",
    # UIDs
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "SOPInstanceUID": "U",
    "MediaStorageSOPInstanceUID": "U",
    "FrameOfReferenceUID": "U",
    "ReferencedSOPInstanceUID": "U",
    "ReferencedSOPInstanceUIDInFile": "U",
    "ReferencedFrameOfReferenceUID": "U",
    "RelatedFrameOfReferenceUID": "U",
    "SynchronizationFrameOfReferenceUID": "U",
    "IrradiationEventUID": "U",
    "StorageMediaFileSetUID": "U",
    "InstanceCreatorUID": "U",
    "DimensionOrganizationUID": "U",
    "ConcatenationUID": "U",
    "UID": "U",
}

#: Per SOP Class, actions that replace the table's where an attribute is Type 1 in that IOD
#: (top level only).  Segmentation: Multi-frame Functional Groups (Content Date/Time) and
#: Enhanced General Equipment (Device Serial Number).
TYPE1_OVERRIDES: dict[str, dict[str, str]] = {
    "1.2.840.10008.5.1.4.1.1.66.4": {"ContentDate": "D", "ContentTime": "D",
                                     "DeviceSerialNumber": "D"},
}

#: Dummy values for ``D`` by VR (Patient ID has its own keyed dummy).
DUMMY_VALUES: dict[str, str] = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "PN": "ANONYMOUS",
    "AS": "000Y", "IS": "0", "DS": "0", "CS": "DEIDENTIFIED", "SH": "DEIDENTIFIED",
    "LO": "DEIDENTIFIED", "ST": "DEIDENTIFIED", "LT": "DEIDENTIFIED", "UT": "DEIDENTIFIED",
    "UC": "DEIDENTIFIED",
}

#: UI keywords that name classes, syntaxes or schemes, never an instance: always kept.
KEPT_UID_KEYWORDS = frozenset({
    "SOPClassUID", "MediaStorageSOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile",
    "SOPClassesInStudy", "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID",
    "CodingSchemeUID", "ContextUID", "ContextGroupExtensionCreatorUID", "MappingResourceUID",
    "PrivateInformationCreatorUID", "EncryptedContentTransferSyntaxUID",
})
_DICOM_ROOT = "1.2.840.10008."
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_METHOD = ["PS3.15 Basic Application Level Confidentiality Profile",
           "ct-nodule-discovery data_tools.deid (keyed UID/ID pseudonyms)"]


def _new_uid(uid: str, secret: bytes) -> str:
    digest = hmac.new(secret, b"uid:" + uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


def _replace_uid(value, secret: bytes):
    def one(v):
        v = "" if v is None else str(v).strip("\0 ")
        if not v or v.startswith(_DICOM_ROOT):
            return v
        return _new_uid(v, secret)

    if isinstance(value, (list, tuple, MultiValue)):
        return [one(v) for v in value]
    return one(value)


def _dummy(elem, secret: bytes, key):
    if elem.keyword == "PatientID":
        original = "" if elem.value is None else str(elem.value).strip()
        return pseudonymous_id(original, key=key, prefix="patient") if original else ""
    return DUMMY_VALUES.get(elem.VR, empty_value_for_VR(elem.VR))


def _clean(ds: Dataset, secret: bytes, key, keep_private: bool, overrides: dict) -> None:
    """Apply the actions to *ds* in place (it is already a private copy)."""
    for tag in list(ds.keys()):
        elem = ds[tag]
        if tag.is_private:
            if not keep_private:
                del ds[tag]
            continue
        keyword = elem.keyword
        action = overrides.get(keyword) or BASIC_PROFILE_ACTIONS.get(keyword, "K")
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = Sequence([]) if elem.VR == "SQ" else empty_value_for_VR(elem.VR)
        elif action == "D":
            elem.value = _dummy(elem, secret, key)
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item, secret, key, keep_private, {})
        elif elem.VR == "UI" and (action == "U" or keyword not in KEPT_UID_KEYWORDS):
            elem.value = _replace_uid(elem.value, secret)


def _code_item() -> Dataset:
    item = Dataset()
    item.CodeValue = "113100"
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = "Basic Application Confidentiality Profile"
    return item


def deidentify_dataset(ds: Dataset, *, key: str | bytes | None = None,
                       keep_private: bool = False) -> Dataset:
    """Return a de-identified copy of *ds* (PS3.15 Basic Profile subset; see module docs).

    Parameters
    ----------
    ds : pydicom.Dataset
        A CT image, Segmentation, RT Structure Set or similar dataset (a ``FileDataset`` read
        by ``dcmread`` included).  Never modified.
    key : str or bytes, optional
        The secret for the Patient ID pseudonym and the UID replacement; defaults to
        ``$DISCOVERY_ID_KEY`` or the built-in default (see :data:`DEFAULT_KEY_NOTICE`).  Use
        one key for all objects of a study so that their UIDs and references stay coherent.
    keep_private : bool
        Keep private elements unchanged (default: remove them).

    Returns
    -------
    pydicom.Dataset
        A deep copy of the same class, with identifying attributes removed, emptied or
        replaced, UIDs replaced consistently, Patient Identity Removed = ``YES`` and the
        de-identification method recorded.  Pixel data are unchanged.
    """
    out = copy.deepcopy(ds)
    secret = id_key(key)
    sop_class = str(ds.get("SOPClassUID", "") or "")
    _clean(out, secret, key, keep_private, TYPE1_OVERRIDES.get(sop_class, {}))

    meta = getattr(out, "file_meta", None)
    if meta is not None and len(meta) > 0:
        new_meta = FileMetaDataset()
        for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
            if kw in meta:
                new_meta[kw] = meta[kw]
        if "MediaStorageSOPInstanceUID" in new_meta:
            new_meta.MediaStorageSOPInstanceUID = _replace_uid(
                new_meta.MediaStorageSOPInstanceUID, secret)
        new_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        new_meta.ImplementationVersionName = "CTNOD_DEID"
        out.file_meta = new_meta
    if getattr(out, "preamble", None) is not None:
        out.preamble = b"\0" * 128
    if hasattr(out, "filename"):
        out.filename = None          # the source path can name the patient

    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = list(_METHOD)
    out.DeidentificationMethodCodeSequence = Sequence([_code_item()])
    return out


def burned_in_annotation_risk(ds: Dataset) -> str | None:
    """Why an image must not be shown as a key image, or None when it may be.

    Returns a reason when Burned In Annotation (0028,0301) is present and not ``NO``; when it
    is absent and Image Type does not start with ``ORIGINAL``; when Image Type contains
    ``SECONDARY``; or when the SOP Class is a Secondary Capture (1.2.840.10008.5.1.4.1.1.7 and
    its multi-frame variants).  Original CT slices without the attribute are accepted: CT
    scanners do not burn text into original images.

    Parameters
    ----------
    ds : pydicom.Dataset
        An image header (pixel data not needed).

    Returns
    -------
    str or None
        A short reason without any identifying value, or None.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if not sop_class and getattr(ds, "file_meta", None) is not None:
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        return "the image is a Secondary Capture, which may carry burned-in text"
    image_type = ds.get("ImageType", None)
    if isinstance(image_type, (list, tuple, MultiValue)):
        image_type = [str(v).strip().upper() for v in image_type]
    else:
        image_type = [str(image_type).strip().upper()] if image_type else []
    if "SECONDARY" in image_type:
        return "Image Type says SECONDARY (a derived picture that may carry burned-in text)"
    burned = ds.get("BurnedInAnnotation", None)
    if burned is not None:
        value = str(burned).strip().upper()
        if value != "NO":
            return f"Burned In Annotation is {value or 'empty'!r}, not 'NO'"
        return None
    if not image_type or image_type[0] != "ORIGINAL":
        return ("Burned In Annotation is absent and Image Type is not ORIGINAL, so burned-in "
                "text cannot be ruled out")
    return None
