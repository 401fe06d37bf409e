"""`python -m cxr_audit.cli` (what torchrun starts): the same commands as the `cxr-audit` script."""

from cxr_audit.cli import main

main()
