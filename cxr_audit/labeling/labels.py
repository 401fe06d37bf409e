"""Reports -> a labels table and its evidence, on every core.

The table has the reports' id column(s), then one column per concept of the vocabulary (1 present, 0
negated, -1 uncertain, blank: not mentioned). A nodule or a mass is a lung lesion (CheXpert's label for
both); the evidence keeps, for every mention behind a label, the sentence, the span, the rule and the cue."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import numpy as np
import pandas as pd

from cxr_audit import concepts
from cxr_audit.labeling.context import IMPLIED, Labeler, ReportLabels
from cxr_audit.labeling.rules import Rules
from cxr_audit.labeling.sources import Reports

LABELER_VERSION = "1.0"
CHEXPERT_COLUMNS = sorted(["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                           "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
                           "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"])
CHUNK = 256

_worker: Labeler | None = None


def _start_worker(rules: dict) -> None:
    global _worker
    _worker = Labeler(Rules.model_validate(rules))


def _label_chunk(texts: list[str]) -> list[ReportLabels]:
    return list(_worker.label_many(texts))


def label_reports(reports: Reports, rules: Rules, processes: int | None = None,
                  progress: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """(labels table, evidence rows) for every report, in the reports' order."""
    from cxr_audit.progress import progress_bar

    processes = processes or min(len(os.sched_getaffinity(0)), max(1, len(reports.texts) // CHUNK))
    chunks = [reports.texts[k:k + CHUNK] for k in range(0, len(reports.texts), CHUNK)]
    bar = progress_bar(total=len(reports.texts), desc="labelling reports", unit="report", disable=not progress)
    results: list[ReportLabels] = []
    if processes <= 1:
        _start_worker(rules.model_dump())
        for chunk in chunks:
            results += _label_chunk(chunk)
            bar.update(len(chunk))
    else:
        with ProcessPoolExecutor(processes, initializer=_start_worker, initargs=(rules.model_dump(),)) as pool:
            for chunk, labelled in zip(chunks, pool.map(_label_chunk, chunks)):
                results += labelled
                bar.update(len(chunk))
    bar.close()
    return _table(reports, results), _evidence(reports, results)


def vocabulary() -> list[str]:
    """The labels table's concept columns: the vocabulary's canonical names, in its order."""
    return [c.name for c in concepts.CONCEPTS]


def _table(reports: Reports, results: list[ReportLabels]) -> pd.DataFrame:
    table = reports.ids.reset_index(drop=True).copy()
    if reports.kept is not None:
        table = pd.concat([table, reports.kept.reset_index(drop=True)], axis=1)
    names = vocabulary()
    values = np.full((len(results), len(names)), np.nan)
    for row, result in enumerate(results):
        for concept, value in result.labels.items():
            values[row, names.index(concept)] = value
    return pd.concat([table, pd.DataFrame(values, columns=names)], axis=1)


def _evidence(reports: Reports, results: list[ReportLabels]) -> list[dict]:
    rows = []
    ids = reports.ids.reset_index(drop=True)
    for row, result in enumerate(results):
        key = {column: _plain(ids.iloc[row][column]) for column in ids.columns}
        for mention in result.mentions:
            rows.append({**key, **asdict(mention), "span": list(mention.span), "gives": implied_by(mention.concept)})
    return rows


def implied_by(concept: str) -> list[str]:
    """The labels a mention of `concept` also gives (its parents, up the chain)."""
    out, parent = [], IMPLIED.get(concept)
    while parent is not None:
        out.append(parent)
        parent = IMPLIED.get(parent)
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def mimic_chexpert(table: pd.DataFrame) -> pd.DataFrame:
    """The table as mimic-cxr-2.0.0-chexpert.csv: subject_id, study_id, the 14 observations alphabetically (the
    official file's columns), then the vocabulary's other concepts (NIH's findings, the fine concepts)."""
    more = [c for c in vocabulary() if c not in CHEXPERT_COLUMNS]
    return table[["subject_id", "study_id", *CHEXPERT_COLUMNS, *more]]
