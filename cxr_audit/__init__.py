"""cxr-audit: audit chest X-ray classifiers before deployment."""

__version__ = "0.1.0"
