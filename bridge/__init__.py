"""ehr-bridge core: knows no transport."""
