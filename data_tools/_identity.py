"""The fake patient identity and UIDs of a synthetic case (:mod:`data_tools.synthetic`).

Realistic but invented names, IDs, dates and institutions, drawn from the cohort's seed and
the case's index, so that privacy tests can check that none of them ever leaves the tool.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fake_identifiers", "series_uids"]

_SURNAMES = ("DOE", "SMITH", "GARCIA", "NGUYEN", "MUELLER", "ROSSI", "KOWALSKI", "OKAFOR",
             "TANAKA", "LINDQVIST", "HOLLOWAY", "FERREIRA", "DUBOIS", "IVANOVA")
_GIVEN = {"F": ("JANE", "MARIA", "AIKO", "GRETA", "AMARA", "LUCIA", "INGRID"),
          "M": ("JOHN", "PAVEL", "KENJI", "OMAR", "LARS", "DIEGO", "TOBIAS")}
_INSTITUTIONS = ("Riverside", "Northgate", "St. Aldric", "Lakeview", "Harborview", "Westbrook",
                 "Mount Carrow", "Elmhurst")


def fake_identifiers(seed: int, index: int) -> dict:
    """Fake identifiers; PatientID, name and accession are unique within a cohort (seed)."""
    rng = np.random.default_rng([seed, index, 1])
    base = np.random.default_rng([seed, 2]).integers(0, 90_000_000, size=2)
    pid_num = 100_000 + (int(base[0]) % 900_000 + index * 293_003) % 900_000
    acc_num = 10_000_000 + (int(base[1]) + index * 1_000_003) % 90_000_000
    code, v = "", pid_num * 7 + 3
    for _ in range(5):
        code, v = chr(ord("A") + v % 26) + code, v // 26
    sex = "F" if rng.random() < 0.5 else "M"
    birth = (int(rng.integers(1935, 1986)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    study = (int(rng.integers(2016, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    age = study[0] - birth[0] - (1 if (study[1], study[2]) < (birth[1], birth[2]) else 0)
    ref = (_SURNAMES[int(rng.integers(len(_SURNAMES)))],
           _GIVEN["F" if rng.random() < 0.5 else "M"][int(rng.integers(7))])
    return {
        "PatientName": f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}-{code}^"
                       f"{_GIVEN[sex][int(rng.integers(7))]}",
        "PatientID": f"PID-{pid_num:06d}",
        "PatientBirthDate": "%04d%02d%02d" % birth,
        "PatientSex": sex,
        "PatientAge": f"{age:03d}Y",
        "AccessionNumber": f"ACC{acc_num:08d}",
        "InstitutionName":
            f"{_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))]} General Hospital",
        "ReferringPhysicianName": f"{ref[0]}^{ref[1]}",
        "StudyDate": "%04d%02d%02d" % study,
        "StudyTime": "%02d%02d%02d" % (int(rng.integers(7, 19)), int(rng.integers(60)),
                                       int(rng.integers(60))),
    }


def series_uids(seed: int, index: int, nz: int) -> dict:
    from pydicom.uid import generate_uid

    def uid(*what):
        return str(generate_uid(entropy_srcs=["ct-nodule-discovery-synthetic", f"seed={seed}",
                                              f"index={index}", *what]))
    return {"StudyInstanceUID": uid("study"), "SeriesInstanceUID": uid("series"),
            "FrameOfReferenceUID": uid("frame"),
            "SOPInstanceUIDs": tuple(uid("sop", str(k)) for k in range(nz))}
