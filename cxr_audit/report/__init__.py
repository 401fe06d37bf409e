"""Figures and the PDF report."""
