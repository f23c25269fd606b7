"""Tamper-evident audit trail: hash-chained events sealed with a KMS-held audit key."""

from keycustody.audit.events import AuditEvent, AuditReport
from keycustody.audit.log import AuditLog

__all__ = ["AuditEvent", "AuditLog", "AuditReport"]
