"""Anatomy for edits: the regions where each concept may be inserted or deleted (`regions`), the mask layout
on disk (`masks`) and the lung segmenter that writes masks for real images (`segmenter`)."""
