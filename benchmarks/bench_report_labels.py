"""Accuracy and speed of the report labeler (`label-reports`), against the baseline a user would write in an
afternoon: the same phrase lists with a keyword match and a simple negation window (a negation word among the
four tokens before the phrase; no uncertainty, no scope, no pseudo-negation, no history).

Development set: tests/data/report_sentences.tsv, radiology sentences labelled by hand with the reason. For
each concept and each sentence the label is 1, 0, -1 or not mentioned; per concept the benchmark prints F1 of
each value the set has (present, negated, uncertain) and their mean (macro F1), for the labeler and the
baseline. Speed: reports of five sentences, on one process and on two.

    python benchmarks/bench_report_labels.py [--reports 4000]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from cxr_audit.labeling.context import Labeler
from cxr_audit.labeling.context import with_implied
from cxr_audit.labeling.labels import label_reports
from cxr_audit.labeling.rules import load_rules

DEV_SET = Path(__file__).resolve().parents[1] / "tests" / "data" / "report_sentences.tsv"
VALUES = {1: "present", 0: "negated", -1: "uncertain"}
NEGATION_WORDS = {"no", "not", "without", "negative", "free", "absent"}


def read_dev_set(path: Path = DEV_SET) -> list[tuple[str, dict[str, int]]]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        sentence, labels, _reason = line.split("\t")
        expected = {}
        for item in filter(None, labels.split(";")):
            concept, value = item.rsplit(":", 1)
            expected[concept] = int(value)
        rows.append((sentence, expected))
    return rows


class KeywordBaseline:
    """Phrase match plus a negation window: what a user would write in an afternoon."""

    def __init__(self, targets: dict[str, list[str]]):
        self.patterns = {concept: re.compile(r"\b(" + "|".join(map(re.escape, sorted(set(phrases), key=len,
                                                                                       reverse=True))) + r")\b")
                         for concept, phrases in targets.items()}

    def label(self, text: str) -> dict[str, int]:
        lower = text.lower()
        labels = {}
        for concept, pattern in self.patterns.items():
            for match in pattern.finditer(lower):
                before = re.findall(r"[a-z]+", lower[:match.start()])[-4:]
                value = 0 if NEGATION_WORDS & set(before) else 1
                labels[concept] = max(labels.get(concept, value), value)
        return with_implied(labels)


def scores(rows, predictions: list[dict[str, int]]) -> dict[str, dict]:
    """Per concept: F1 of each value the development set has, and their mean."""
    out = {}
    concepts = sorted({c for _, expected in rows for c in expected})
    for concept in concepts:
        truth = [expected.get(concept) for _, expected in rows]
        guess = [predicted.get(concept) for predicted in predictions]
        per_value = {}
        for value, name in VALUES.items():
            support = sum(t == value for t in truth)
            if support == 0:
                continue
            tp = sum(t == value and g == value for t, g in zip(truth, guess))
            fp = sum(t != value and g == value for t, g in zip(truth, guess))
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / support
            per_value[name] = {"support": support, "f1": 2 * precision * recall / (precision + recall)
                               if precision + recall else 0.0}
        out[concept] = {"values": per_value, "macro_f1": float(np.mean([v["f1"] for v in per_value.values()])),
                        "support": sum(v["support"] for v in per_value.values())}
    return out


def speed(rules, n_reports: int) -> dict[int, float]:
    from cxr_audit.labeling.sources import Reports

    import pandas as pd

    sentences = [s for s, _ in read_dev_set()]
    rng = np.random.default_rng(0)
    texts = ["FINDINGS: " + " ".join(rng.choice(sentences, 4)) + "\nIMPRESSION: " + rng.choice(sentences)
             for _ in range(n_reports)]
    reports = Reports(DEV_SET, "csv", pd.DataFrame({"id": range(n_reports)}), texts, [""] * n_reports)
    out = {}
    for processes in (1, 2):
        started = time.perf_counter()
        label_reports(reports, rules, processes=processes, progress=False)
        out[processes] = n_reports / (time.perf_counter() - started)
    return out


def phantom_reports(n: int, seed: int = 0) -> list[tuple[str, dict[str, int]]]:
    """Reports of a phantom cohort, each with the labels its text states."""
    from cxr_audit.data.phantom.dataset import Prevalence, plan_cohort, study_of
    from cxr_audit.data.phantom.reports import study_report

    cohort = plan_cohort(n, Prevalence(), seed)
    return [study_report(study_of(row), int(row["study_seed"])) for _, row in cohort.iterrows()]


def _print_phantom(labeler: Labeler, baseline: KeywordBaseline, n: int) -> None:
    rows = phantom_reports(n)
    ours = scores(rows, [{k: v for k, v in labeler.label(t).labels.items() if k != "No Finding"} for t, _ in rows])
    theirs = scores(rows, [baseline.label(t) for t, _ in rows])
    print(f"\nphantom reports: {len(rows)} (labels as each report's text states them)")
    _print_table(ours, theirs)


def _print_table(ours: dict, theirs: dict) -> None:
    print(f"{'concept':<28}{'n':>5}  {'labeler macro F1':>17}  {'keyword baseline':>17}   labeler F1 by value")
    for concept, entry in sorted(ours.items(), key=lambda item: -item[1]["support"]):
        by_value = ", ".join(f"{name} {v['f1']:.2f} ({v['support']})" for name, v in entry["values"].items())
        print(f"{concept:<28}{entry['support']:>5}  {entry['macro_f1']:>17.3f}  {theirs[concept]['macro_f1']:>17.3f}"
              f"   {by_value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=4000, help="reports timed for the speed figures")
    parser.add_argument("--phantom", type=int, default=1000, help="phantom reports scored")
    args = parser.parse_args()
    rules, rules_sha256 = load_rules()
    rows = read_dev_set()
    labeler, baseline = Labeler(rules), KeywordBaseline(rules.targets)
    ours = scores(rows, [{k: v for k, v in labeler.label(s).labels.items() if k != "No Finding"} for s, _ in rows])
    theirs = scores(rows, [baseline.label(s) for s, _ in rows])
    print(f"development set: {len(rows)} sentences ({DEV_SET.name}); rules {rules_sha256[:12]}")
    _print_table(ours, theirs)
    weighted = lambda table: sum(e["macro_f1"] * e["support"] for e in table.values()) / sum(  # noqa: E731
        e["support"] for e in table.values())
    print(f"{'mean over concepts':<33}{np.mean([e['macro_f1'] for e in ours.values()]):>17.3f}  "
          f"{np.mean([e['macro_f1'] for e in theirs.values()]):>17.3f}")
    print(f"{'weighted by mentions':<33}{weighted(ours):>17.3f}  {weighted(theirs):>17.3f}")
    _print_phantom(labeler, baseline, args.phantom)
    for processes, rate in speed(rules, args.reports).items():
        print(f"speed: {rate:,.0f} reports/s on {processes} process{'es' if processes > 1 else ''}")


if __name__ == "__main__":
    main()
