"""Scoring on real images: metrics per concept and cell with bootstrap CIs (`scoring`), the probe of the
frozen model with (source, edited) pairs (`probe`), and their typed documents (`documents`)."""
