"""Radiology-style reports of phantom studies: FINDINGS and IMPRESSION written from the study's known findings,
in varied wording (severity, laterality, devices by kind), with negated absent findings (often as lists),
some subtle findings hedged, and some reports in upper case.

Each report comes with the labels its text states (1 present, 0 negated, -1 hedged; a finding not mentioned
is absent from the dict): what a perfect report labeler returns, so the labeler's accuracy is measured
against it, and the demo can derive its concept vectors from text."""

from __future__ import annotations

import numpy as np

HEDGES = ("Possible", "Questionable", "Cannot exclude a", "Suspected", "Equivocal")
SEVERITY = ((0.45, "small"), (0.75, "moderate"), (1.01, "large"))
CARDIAC_SEVERITY = ((0.45, "mild"), (0.75, "moderate"), (1.01, "severe"))
_DEVICES = {
    "ett": ("Endotracheal tube terminates {cm} cm above the carina.", "ET tube in standard position."),
    "line": ("Right internal jugular central venous catheter terminates in the SVC.",
             "Right PICC line terminates in the lower SVC."),
    "ecg": ("ECG leads overlie the chest.", "Monitoring leads project over the thorax."),
}
_NEGATIONS = {  # how an absent finding is said, alone
    "Cardiomegaly": ("No cardiomegaly.", "The heart is not enlarged."),
    "Pleural Effusion": ("No pleural effusion.", "There is no pleural effusion.", "No effusion."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
    "Consolidation": ("No focal consolidation.", "No consolidation."),
    "Edema": ("No pulmonary edema.", "No edema."),
    "Atelectasis": ("No atelectasis.",),
    "Nodule": ("No pulmonary nodule.", "No suspicious nodules."),
}
_LIST_NAMES = {"Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax",
               "Consolidation": "focal consolidation", "Edema": "pulmonary edema"}  # how a negated list names them


def _word(value: float, scale) -> str:
    return next(word for bound, word in scale if value < bound)


def _side(side: str) -> str:
    return {"left": "left", "right": "right", "both": "bilateral"}.get(side, "right")


def _present(finding: str, severity: float, side: str, rng: np.random.Generator) -> str:
    """One sentence stating a finding that is there."""
    size, where = _word(severity, SEVERITY), _side(side)
    plural = "s" if where == "bilateral" else ""
    options = {
        "Cardiomegaly": (f"{_word(severity, CARDIAC_SEVERITY).capitalize()} cardiomegaly.", "The heart is enlarged.",
                         "Enlarged cardiac silhouette.", "The cardiac silhouette is enlarged."),
        "Pleural Effusion": (f"{size.capitalize()} {where} pleural effusion{plural}.",
                             f"There is a {size} {where} effusion." if not plural else f"{size.capitalize()} "
                             "bilateral effusions.",
                             f"Blunting of the {where} costophrenic angle{plural}.",
                             f"{where.capitalize()} pleural effusion{plural} {'is' if not plural else 'are'} present."),
        "Pneumothorax": (f"{size.capitalize()} {where} apical pneumothorax.", f"There is a {size} {where} pneumothorax.",
                         f"A pleural line is seen at the {where} apex."),
        "Consolidation": (f"{where.capitalize()} lower lobe consolidation.",
                          f"Focal consolidation in the {where} lung.", f"Air bronchograms in the {where} lower lobe."),
        "Edema": (f"{_word(severity, CARDIAC_SEVERITY).capitalize()} pulmonary edema.", "Interstitial edema.",
                  "Pulmonary vascular congestion."),
        "Atelectasis": (f"{where.capitalize()} basilar atelectasis.", f"Plate-like atelectasis at the {where} base.",
                        f"Volume loss in the {where} lower lobe."),
        "Nodule": (f"A {int(6 + 14 * severity)} mm nodule in the {where} lung.",
                   f"{where.capitalize()} pulmonary nodule."),
    }[finding]
    return options[rng.integers(len(options))]


def _hedged(finding: str, side: str, rng: np.random.Generator) -> str:
    name = {"Cardiomegaly": "cardiomegaly", "Pleural Effusion": f"small {_side(side)} effusion",
            "Pneumothorax": f"small {_side(side)} pneumothorax", "Consolidation": f"{_side(side)} consolidation",
            "Edema": "mild pulmonary edema", "Atelectasis": f"{_side(side)} basilar atelectasis",
            "Nodule": f"{_side(side)} nodule"}[finding]
    hedge = HEDGES[rng.integers(len(HEDGES))]
    return f"{hedge} {name}."


def write_report(present: set[str], severity: dict[str, float], side: dict[str, str], devices: tuple[str, ...],
                 seed: int, findings: tuple[str, ...]) -> tuple[str, dict[str, int]]:
    """(report text, the labels its text states) for one study; `findings` are the phantom's findings."""
    rng = np.random.default_rng(seed)
    stated: dict[str, int] = {}
    sentences, impression = [], []
    for finding in findings:
        if finding == "Support Devices" or finding not in present:
            continue
        if severity.get(finding, 1.0) < 0.35 and rng.random() < 0.3:  # a subtle finding, hedged
            sentence = _hedged(finding, side.get(finding, "right"), rng)
            stated[finding] = -1
        else:
            sentence = _present(finding, severity.get(finding, 0.6), side.get(finding, "right"), rng)
            stated[finding] = 1
        sentences.append(sentence)
        impression.append(sentence)
    for device in devices if "Support Devices" in present else ():
        sentences.append(_DEVICES[device][rng.integers(2)].format(cm=int(rng.integers(3, 6))))
        stated["Support Devices"] = 1
    absent = [f for f in findings if f not in present and f != "Support Devices" and rng.random() < 0.6]
    listed = [f for f in absent if f in _LIST_NAMES]
    if len(listed) >= 2 and rng.random() < 0.6:  # absent findings negated as one list
        names = [_LIST_NAMES[f] for f in listed]
        opener = ("No", "No evidence of", "Without")[rng.integers(3)]
        sentences.append(f"{opener} {', '.join(names[:-1])} or {names[-1]}." if opener != "Without" else
                         f"Lungs are clear without {', '.join(names[:-1])}, or {names[-1]}.")
        absent = [f for f in absent if f not in listed]
        stated.update({f: 0 for f in listed})
    for finding in absent:
        options = _NEGATIONS[finding]
        sentences.append(options[rng.integers(len(options))])
        stated[finding] = 0
    rng.shuffle(sentences)
    text = "FINDINGS: " + " ".join(sentences) + "\nIMPRESSION: " + (
        " ".join(impression) if impression else "No acute cardiopulmonary process.")
    if rng.random() < 0.1:
        text = text.upper()
    return text, stated


def study_report(study, seed: int) -> tuple[str, dict[str, int]]:
    """The report of a phantom study (`phantom.Study`), from its findings; `seed` picks the wording."""
    from cxr_audit.data.phantom import PHANTOM_FINDINGS

    findings = study.findings
    return write_report(set(findings.present), dict(findings.severity), dict(findings.side), tuple(findings.devices),
                        seed, PHANTOM_FINDINGS)
