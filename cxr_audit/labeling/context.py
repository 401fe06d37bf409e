"""Concept labels from report text: spaCy finds sentences and phrase matches, the ConText algorithm decides
whether each mention is negated, uncertain or historical.

Per sentence: every mention of a concept (the rules' target phrases, longest match first) and every cue
(negation, uncertainty, history; a pseudo-cue such as "no change in" blocks the cue words it contains). A cue
governs the mentions after it (forward), before it (backward) or both, up to a termination cue ("but",
"however", "which"), a ';' or the end of the sentence: "no pneumothorax, effusion or consolidation" negates
all three, "no effusion but a small pneumothorax" only the effusion. A report's label for a concept is 1 when
any mention is present, else -1 when any is uncertain, else 0 when negated (CheXpert's aggregation); a fine
concept gives its label too (a meniscus is an effusion); No Finding is 1 when no finding other than support
devices is present or uncertain. Every label keeps the
sentence, the matched span, the rule and the cue behind it (the evidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxr_audit import concepts
from cxr_audit.concepts import NO_FINDING
from cxr_audit.labeling.rules import Rules
from cxr_audit.labeling.sections import labelled_sections

PRESENT, NEGATED, UNCERTAIN = 1, 0, -1
_PRIORITY = {PRESENT: 3, UNCERTAIN: 2, NEGATED: 1}  # a report's label: the strongest of its mentions
# The label each concept's mention also gives: a fine concept's parent, and CheXpert's observation for the
# findings the vocabulary names more finely (a nodule or a mass is a lung lesion).
IMPLIED = {"Nodule": "Lung Lesion", "Mass": "Lung Lesion",
           **{c.name: c.parent for c in concepts.CONCEPTS if c.parent is not None}}
# what does not count against No Finding (CheXpert): support devices, of any kind
NOT_FINDINGS = {NO_FINDING, "Support Devices", *(c for c, parent in IMPLIED.items() if parent == "Support Devices")}


@dataclass
class Mention:
    concept: str
    value: int
    section: str
    sentence: str
    span: tuple[int, int]        # character offsets in the report
    phrase: str                  # the rule (target phrase) that matched
    cue: str | None = None       # the cue that made it negated, uncertain or historical
    cue_kind: str | None = None


@dataclass
class ReportLabels:
    labels: dict[str, int] = field(default_factory=dict)   # concept -> 1 / 0 / -1 (absent: not mentioned)
    mentions: list[Mention] = field(default_factory=list)


class Labeler:
    """One spaCy pipeline (blank English, rule-based sentencizer: nothing is downloaded) with the rules'
    matchers; `label(text)` for one report, `label_many(texts)` streams through `nlp.pipe`."""

    def __init__(self, rules: Rules):
        import spacy
        from spacy.matcher import PhraseMatcher

        self.rules = rules
        self.nlp = spacy.blank("en")
        self.nlp.add_pipe("sentencizer", config={"punct_chars": [".", "!", "?", "\n\n"]})
        self.targets = PhraseMatcher(self.nlp.vocab, attr="LOWER")
        for concept, phrases in rules.targets.items():
            self.targets.add(concept, list(self.nlp.tokenizer.pipe(sorted(set(phrases)))))
        self.cues = PhraseMatcher(self.nlp.vocab, attr="LOWER")
        for kind, by_direction in rules.cues.items():
            for direction, phrases in by_direction.items():
                if phrases:
                    self.cues.add(f"{kind}:{direction}", list(self.nlp.tokenizer.pipe(sorted(set(phrases)))))
        # what a history cue leaves present: the rules' concepts and their kinds (a prior sternotomy's wires)
        self.historical_present = set(rules.historical_present) | {
            c for c, parent in IMPLIED.items() if parent in rules.historical_present}

    def label(self, text: str) -> ReportLabels:
        return next(self.label_many([text]))

    def label_many(self, texts, batch_size: int = 64):
        """ReportLabels for each text, in order."""
        for text in texts:
            parts = labelled_sections(text)
            docs = self.nlp.pipe((text[p.start:p.end] for p in parts), batch_size=batch_size)
            result = ReportLabels()
            for part, doc in zip(parts, docs):
                for sentence in doc.sents:
                    result.mentions += self._sentence(sentence, part.name, part.start)
            result.labels = _aggregate(result.mentions)
            yield result

    def _sentence(self, sentence, section: str, offset: int) -> list[Mention]:
        """The mentions of one sentence (token positions are the document's: the matchers give them so)."""
        from spacy.util import filter_spans

        doc, vocab = sentence.doc, self.nlp.vocab.strings
        found_targets: dict[tuple[int, int], list[str]] = {}
        for match_id, start, end in self.targets(sentence):
            found_targets.setdefault((start, end), []).append(vocab[match_id])
        if not found_targets:
            return []
        cues, pseudo, terminations = [], [], [t.i for t in sentence if t.text == ";"]
        for match_id, start, end in self.cues(sentence):
            kind, direction = vocab[match_id].split(":")
            if kind == "pseudo":
                pseudo.append((start, end))
            elif kind == "termination":
                terminations.append(start)
            else:
                cues.append((doc[start:end], kind, direction))
        # a cue inside a pseudo-cue is not that cue; overlapping cues: the longest wins ("cannot exclude" over "not")
        cues = [c for c in cues if not any(c[0].start < e and s < c[0].end for s, e in pseudo)]
        kept = {(span.start, span.end) for span in filter_spans([c[0] for c in cues])}
        cues = [c for c in cues if (c[0].start, c[0].end) in kept]
        mentions = []
        for span in filter_spans([doc[s:e] for s, e in found_targets]):
            for concept in dict.fromkeys(found_targets[(span.start, span.end)]):
                judged = self._judge(concept, span.start, span.end, cues, terminations)
                if judged is None:
                    continue
                value, cue, kind = judged
                mentions.append(Mention(concept, value, section, sentence.text.strip(),
                                        (offset + span.start_char, offset + span.end_char), span.text.lower(), cue,
                                        kind))
        return mentions

    def _judge(self, concept: str, start: int, end: int, cues, terminations: list[int]):
        """(value, cue, cue kind) of one mention at tokens [start, end); None when it is historical (a finding
        seen before, not now)."""
        governing: dict[str, str] = {}
        for span, kind, direction in cues:
            if span.start < end and start < span.end:  # a cue inside the mention ("heart is not enlarged")
                governing.setdefault(kind, span.text)
                continue
            # a scope ends at a termination cue, a ';', or another cue ("opacity may represent atelectasis
            # versus pneumonia": 'versus' does not reach back past 'may represent' to the opacity)
            ends = terminations + [c.start for c, _, _ in cues if c is not span]
            if span.end <= start and direction in ("forward", "both"):
                blocked = any(span.end <= t < start for t in ends)
            elif end <= span.start and direction in ("backward", "both"):
                blocked = any(end <= t < span.start for t in ends)
            else:
                continue
            if not blocked:
                governing.setdefault(kind, span.text)
        if "historical" in governing and concept not in self.historical_present:
            return None if "negated" not in governing else (NEGATED, governing["negated"], "negated")
        for kind, value in (("negated", NEGATED), ("uncertain", UNCERTAIN)):
            if kind in governing:
                return value, governing[kind], kind
        if "historical" in governing:
            return PRESENT, governing["historical"], "historical"
        return PRESENT, None, None


def with_implied(labels: dict[str, int]) -> dict[str, int]:
    """The labels with what each implies (up the chain: a calcified granuloma is a nodule is a lung lesion);
    a parent takes the strongest of its own and its children's labels."""
    out = dict(labels)
    for concept in list(out):
        value, parent = out[concept], IMPLIED.get(concept)
        while parent is not None:
            if parent not in out or _PRIORITY[value] > _PRIORITY[out[parent]]:
                out[parent] = value
            parent = IMPLIED.get(parent)
    return out


def _aggregate(mentions: list[Mention]) -> dict[str, int]:
    labels: dict[str, int] = {}
    for mention in mentions:
        if mention.concept not in labels or _PRIORITY[mention.value] > _PRIORITY[labels[mention.concept]]:
            labels[mention.concept] = mention.value
    labels = with_implied(labels)
    if not any(value in (PRESENT, UNCERTAIN) for concept, value in labels.items() if concept not in NOT_FINDINGS):
        labels[NO_FINDING] = PRESENT
    return labels
