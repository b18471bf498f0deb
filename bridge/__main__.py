"""``python -m bridge`` runs the ``ehr-bridge`` command line."""

from bridge.cli import main

main()
