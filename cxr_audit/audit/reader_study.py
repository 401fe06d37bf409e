"""A blinded reader study's answers, scored against its key: how often synthetic images pass as real, how well
each reader tells them apart, how much readers agree, and whether they see the finding an edit meant to show.

On documents: the key (case id -> truth and, for a synthetic case, the edit's operation and concepts) and the
responses (one row per reader and case, already validated by `read_responses`). The stage reads and writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cxr_audit.errors import UserInputError
from cxr_audit.metrics.bootstrap import proportion_interval
from cxr_audit.metrics.discrimination import weighted_auroc

JUDGEMENTS = ("real", "synthetic")
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)
AUROC_REPLICATES = 1000


@dataclass(frozen=True)
class KeyCase:
    """What a case is. For a synthetic case: the edit's operation ('insert', 'delete', 'swap'), its label
    (e.g. 'insert Cardiomegaly'), the concepts it made present (`shown`) and absent (`removed`)."""

    truth: str
    operation: str | None = None
    edit: str | None = None
    shown: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Response:
    case_id: str
    reader: str
    judged: str
    confidence: int
    findings: frozenset[str]

    @property
    def synthetic_score(self) -> int:
        """How sure the reader is that the case is synthetic, on one ordinal scale: -5 (sure it is real) .. +5."""
        return self.confidence if self.judged == "synthetic" else -self.confidence


def _share(successes: int, n: int) -> dict:
    estimate = proportion_interval(successes, n)
    ci = estimate.ci or (None, None)
    return {"value": None if estimate.value is None else round(estimate.value, 6),
            "ci_low": None if ci[0] is None else round(ci[0], 6),
            "ci_high": None if ci[1] is None else round(ci[1], 6), "n": n}


def _finding_agreed(response: Response, case: KeyCase) -> bool:
    """The reader names every finding the edit meant to show and none it removed."""
    return set(case.shown) <= response.findings and not (set(case.removed) & response.findings)


def _shares(responses: Iterable[Response], key: dict[str, KeyCase]) -> dict:
    responses = list(responses)
    synthetic = [r for r in responses if key[r.case_id].truth == "synthetic"]
    real = [r for r in responses if key[r.case_id].truth == "real"]
    out = {"synthetic_judged_real": _share(sum(r.judged == "real" for r in synthetic), len(synthetic)),
           "finding_agreement": _share(sum(_finding_agreed(r, key[r.case_id]) for r in synthetic), len(synthetic))}
    if real:
        out["real_judged_real"] = _share(sum(r.judged == "real" for r in real), len(real))
    return out


def detection_auroc(responses: list[Response], key: dict[str, KeyCase], seed: int = 0) -> dict:
    """One reader's AUROC for telling synthetic from real (the ordinal score of `synthetic_score`), with a
    percentile bootstrap interval over cases. 0.5: cannot tell them apart; 1.0: always can."""
    from sklearn.metrics import roc_auc_score

    truth = np.array([key[r.case_id].truth == "synthetic" for r in responses], dtype=float)
    score = np.array([r.synthetic_score for r in responses], dtype=float)
    if truth.min(initial=1) == truth.max(initial=0):
        return {"value": None, "ci_low": None, "ci_high": None, "n": len(responses),
                "reason": "the cases this reader judged are all real or all synthetic"}
    value = float(roc_auc_score(truth, score))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, truth.size, (AUROC_REPLICATES, truth.size))
    weights = np.zeros((AUROC_REPLICATES, truth.size))
    np.add.at(weights, (np.arange(AUROC_REPLICATES)[:, None], draws), 1.0)  # cases drawn with replacement
    both_classes = (weights @ truth > 0) & (weights @ (1 - truth) > 0)
    replicates = weighted_auroc(score, truth, weights[both_classes])
    low, high = np.quantile(replicates, [0.025, 0.975])
    return {"value": round(value, 6), "ci_low": round(float(low), 6), "ci_high": round(float(high), 6),
            "n": len(responses)}


def agreement(responses: list[Response]) -> dict:
    """Agreement between readers on real / synthetic over the cases every reader judged: Cohen's kappa for two
    readers (scikit-learn), Fleiss' kappa for more (statsmodels)."""
    readers = sorted({r.reader for r in responses})
    if len(readers) < 2:
        return {"method": None, "kappa": None, "readers": len(readers), "cases": 0,
                "reason": "one reader: agreement needs two or more"}
    by_reader = {reader: {r.case_id: r.judged for r in responses if r.reader == reader} for reader in readers}
    cases = sorted(set.intersection(*(set(answers) for answers in by_reader.values())))
    table = np.array([[by_reader[reader][case] == "synthetic" for reader in readers] for case in cases], dtype=int)
    if len(readers) == 2:
        from sklearn.metrics import cohen_kappa_score

        method = "Cohen's kappa"
        with np.errstate(invalid="ignore", divide="ignore"):
            kappa = float(cohen_kappa_score(table[:, 0], table[:, 1])) if len(cases) else float("nan")
    else:
        from statsmodels.stats.inter_rater import fleiss_kappa

        method = "Fleiss' kappa"
        counts = np.stack([(table == 0).sum(axis=1), (table == 1).sum(axis=1)], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            kappa = float(fleiss_kappa(counts)) if len(cases) else float("nan")
    out = {"method": method, "kappa": round(kappa, 6) if np.isfinite(kappa) else None, "readers": len(readers),
           "cases": len(cases)}
    if out["kappa"] is None:
        out["reason"] = "not defined: every reader gave the same answer to every case (no variation to agree on)"
    return out


def score_reader_study(key: dict[str, KeyCase], responses: list[Response], seed: int = 0) -> dict:
    """reader_study.json's results: overall, per operation and per edit (concept), per reader, and agreement."""
    synthetic = [r for r in responses if key[r.case_id].truth == "synthetic"]
    operations = sorted({key[r.case_id].operation for r in synthetic})
    edits = sorted({key[r.case_id].edit for r in synthetic})
    readers = sorted({r.reader for r in responses})
    return {
        "overall": _shares(responses, key),
        "by_operation": {op: _shares([r for r in synthetic if key[r.case_id].operation == op], key) for op in operations},
        "by_edit": {edit: _shares([r for r in synthetic if key[r.case_id].edit == edit], key) for edit in edits},
        "by_reader": {reader: {**_shares([r for r in responses if r.reader == reader], key),
                               "detection_auroc": detection_auroc([r for r in responses if r.reader == reader], key,
                                                                  seed)}
                      for reader in readers},
        "agreement": agreement(responses),
    }


# -- the kit's cases -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticCandidate:
    """An accepted edit that may become a case."""

    edit_id: str
    source_image_id: str
    case: KeyCase


def choose_cases(synthetic: list[SyntheticCandidate], real_image_ids: list[str], n: int, synthetic_fraction: float,
                 seed: int, pairs: bool = False) -> tuple[list[tuple[str, KeyCase, str]], list[str]]:
    """The kit's cases, shuffled and numbered: (case id, what it is, the edit id or image id it shows), and notes.

    Synthetic cases are drawn evenly across the edits (operation and concept): one from each in turn, in a
    seeded order. Real cases are training images; the source of a chosen edit is never among them, unless
    `pairs`, when the chosen edits' sources come first (a paired design: the reader sees both)."""
    rng = np.random.default_rng(seed)
    notes = []
    wanted_synthetic = int(round(n * synthetic_fraction))
    groups: dict[str, list[SyntheticCandidate]] = {}
    for candidate in sorted(synthetic, key=lambda c: c.edit_id):
        groups.setdefault(candidate.case.edit or "", []).append(candidate)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[SyntheticCandidate] = []
    while len(chosen) < wanted_synthetic and any(groups.values()):
        for edit in sorted(groups):
            if groups[edit] and len(chosen) < wanted_synthetic:
                chosen.append(groups[edit].pop())
    if len(chosen) < wanted_synthetic:
        notes.append(f"only {len(chosen)} accepted edits to show: the kit has {len(chosen)} synthetic cases, not "
                     f"{wanted_synthetic}")
    sources = [c.source_image_id for c in chosen]
    available = [i for i in sorted(set(real_image_ids)) if i not in set(sources)]
    rng.shuffle(available)
    wanted_real = n - wanted_synthetic
    real = ([s for s in dict.fromkeys(sources) if s in set(real_image_ids)][:wanted_real] if pairs else [])
    real += available[:wanted_real - len(real)]
    if len(real) < wanted_real:
        notes.append(f"only {len(real)} real training images to show, not {wanted_real}")
    cases = [(KeyCase("synthetic", **_case_fields(c.case)), c.edit_id) for c in chosen]
    cases += [(KeyCase("real"), image_id) for image_id in real]
    order = rng.permutation(len(cases))
    width = max(4, len(str(len(cases))))
    return [(f"case_{k + 1:0{width}d}", *cases[i]) for k, i in enumerate(order)], notes


def _case_fields(case: KeyCase) -> dict:
    return {"operation": case.operation, "edit": case.edit, "shown": case.shown, "removed": case.removed}


def key_document(cases: list[tuple[str, KeyCase, str]], concepts: list[str], size: int) -> dict:
    """key.json: what every case is. Stays in the run; the kit carries only this document's SHA-256."""
    return {"schema_version": "1.0", "concepts": concepts, "image_size": size,
            "cases": {case_id: {"truth": case.truth, ("edit_id" if case.truth == "synthetic" else "image_id"): shown,
                                **({"operation": case.operation, "edit": case.edit, "shown": list(case.shown),
                                    "removed": list(case.removed)} if case.truth == "synthetic" else {})}
                      for case_id, case, shown in cases}}


def key_cases(document: dict) -> dict[str, KeyCase]:
    return {case_id: KeyCase(entry["truth"], entry.get("operation"), entry.get("edit"),
                             tuple(entry.get("shown", ())), tuple(entry.get("removed", ())))
            for case_id, entry in document["cases"].items()}


# -- the readers' answers --------------------------------------------------------------------------------------
RESPONSE_COLUMNS = ("kit_key_sha256", "case_id", "reader", "judged", "confidence", "findings")


def parse_responses(path, rows: list[dict[str, str]], columns: list[str], key: dict[str, KeyCase], key_sha256: str,
                    concepts: list[str]) -> list[Response]:
    """One responses file's rows (as read, every value text) checked and typed. Every problem is a
    UserInputError naming the file, line and column."""
    missing = [c for c in RESPONSE_COLUMNS if c not in columns]
    if missing:
        raise UserInputError(f"{path}: no column {', '.join(repr(c) for c in missing)} (a responses file has the "
                             f"columns {', '.join(RESPONSE_COLUMNS)}, as in the kit's responses_template.csv and the "
                             "file its form saves).")
    if not rows:
        raise UserInputError(f"{path} has no answers: fill in one row per case (the kit's form saves such a file).")
    known = {c.lower(): c for c in concepts}
    out = []
    for line, row in enumerate(rows, start=2):
        def bad(column: str, why: str):
            return UserInputError(f"{path} line {line}, column {column}: {why}")

        if row["kit_key_sha256"].strip() != key_sha256:
            raise bad("kit_key_sha256", f"{row['kit_key_sha256'].strip()[:16]!r}... is not this run's reader-study "
                      f"key ({key_sha256[:16]}...): the answers are to another kit. Score them against the run that "
                      "exported that kit.")
        case_id = row["case_id"].strip()
        if case_id not in key:
            raise bad("case_id", f"{case_id!r} is not a case of the kit (case_0001 .. {max(key)}).")
        reader = row["reader"].strip()
        if not reader:
            raise bad("reader", "empty: name the reader (initials or a code) on every row.")
        judged = row["judged"].strip().lower()
        if judged not in JUDGEMENTS:
            raise bad("judged", f"{row['judged']!r} is not 'real' or 'synthetic'.")
        confidence = row["confidence"].strip()
        if confidence not in {str(level) for level in CONFIDENCE_LEVELS}:
            raise bad("confidence", f"{row['confidence']!r} is not a whole number from 1 (unsure) to 5 (certain).")
        findings = set()
        for name in (part.strip() for part in row["findings"].split(";")):
            if not name:
                continue
            if name.lower() not in known:
                raise bad("findings", f"{name!r} is not one of the kit's findings ({', '.join(concepts)}); separate "
                          "findings with ';'.")
            findings.add(known[name.lower()])
        out.append(Response(case_id, reader, judged, int(confidence), frozenset(findings)))
    return out


def check_complete(responses_by_file: dict, key: dict[str, KeyCase]) -> None:
    """Every reader answered every case once, across all the files given."""
    seen: dict[tuple[str, str], str] = {}
    for path, responses in responses_by_file.items():
        for response in responses:
            where = seen.get((response.reader, response.case_id))
            if where is not None:
                raise UserInputError(f"{path}: reader {response.reader!r} answered {response.case_id} more than once "
                                     f"(also in {where}). Keep one answer per reader and case.")
            seen[(response.reader, response.case_id)] = str(path)
    for reader in sorted({r for r, _ in seen}):
        missing = sorted(case for case in key if (reader, case) not in seen)
        if missing:
            raise UserInputError(f"reader {reader!r} did not answer {len(missing)} of the {len(key)} cases "
                                 f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}). Every reader answers "
                                 "every case; pass all of a reader's files together.")
