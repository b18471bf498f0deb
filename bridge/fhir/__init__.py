"""FHIR Subscriptions in: notification parsing, the FHIR client, mapping, intake and subscription management."""
