"""Report text -> concept labels: sections, mention rules, ConText cues, evidence (see context.py)."""
