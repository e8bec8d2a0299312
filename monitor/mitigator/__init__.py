"""The mitigator: Alertmanager webhooks -> safe, audited, automated mitigations.

``webhook`` parses Alertmanager's payload, ``store`` keeps notifications and
jobs durably (SQLite or PostgreSQL), ``actions`` runs sidecar, http and command
actions, ``service`` is the ``monitor mitigator`` process. See docs/mitigator.md.
"""
