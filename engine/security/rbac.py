"""Roles, permissions and the rules no configuration can weaken.

Invariants:
- Five roles: agent, qa, supervisor, admin, auditor. A role holds exactly the permissions of the
  matrix (default below, or loaded from a dict); anything not granted is denied.
- Whatever the matrix says: agents and QA never export or delete recordings; auditors hold audit
  permissions and nothing else; only admins approve. A matrix that breaks one of these is refused
  at load time with the offending path.
- Exporting or deleting a recording and setting a legal hold need a second person's approval
  (see approvals.py); `needs_approval` says which.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class Role(enum.StrEnum):
    AGENT = "agent"
    QA = "qa"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"
    AUDITOR = "auditor"


class Permission(enum.StrEnum):
    CALLS_HANDLE = "calls.handle"
    CALLS_MONITOR = "calls.monitor"
    QUEUE_MANAGE = "queue.manage"
    METADATA_READ = "metadata.read"  # always shown through the role's mask policy
    RECORDING_LIST = "recording.list"
    RECORDING_PLAY = "recording.play"
    RECORDING_EXPORT = "recording.export"
    RECORDING_DELETE = "recording.delete"
    LEGAL_HOLD = "recording.legal_hold"
    APPROVE = "approval.grant"
    CONFIG_READ = "config.read"
    CONFIG_WRITE = "config.write"
    USERS_MANAGE = "users.manage"
    KEYS_ROTATE = "keys.rotate"
    RETENTION_MANAGE = "retention.manage"
    AUDIT_READ = "audit.read"
    AUDIT_VERIFY = "audit.verify"


P = Permission

DEFAULT_MATRIX: dict[str, list[str]] = {
    "agent": [P.CALLS_HANDLE, P.METADATA_READ, P.RECORDING_LIST, P.RECORDING_PLAY],
    "qa": [P.METADATA_READ, P.RECORDING_LIST, P.RECORDING_PLAY, P.CALLS_MONITOR],
    "supervisor": [
        P.CALLS_HANDLE, P.CALLS_MONITOR, P.QUEUE_MANAGE, P.METADATA_READ,
        P.RECORDING_LIST, P.RECORDING_PLAY, P.RECORDING_EXPORT,
    ],
    "admin": [
        P.METADATA_READ, P.RECORDING_LIST, P.RECORDING_PLAY, P.RECORDING_EXPORT,
        P.RECORDING_DELETE, P.LEGAL_HOLD, P.APPROVE, P.CONFIG_READ, P.CONFIG_WRITE,
        P.USERS_MANAGE, P.KEYS_ROTATE, P.RETENTION_MANAGE, P.QUEUE_MANAGE,
    ],
    "auditor": [P.AUDIT_READ, P.AUDIT_VERIFY],
}

NEEDS_APPROVAL = frozenset({P.RECORDING_EXPORT, P.RECORDING_DELETE, P.LEGAL_HOLD})
MFA_ROLES = frozenset({Role.SUPERVISOR, Role.ADMIN, Role.AUDITOR})

# (role, permission) pairs no matrix may grant.
_FORBIDDEN: dict[Role, frozenset[Permission]] = {
    Role.AGENT: frozenset({P.RECORDING_EXPORT, P.RECORDING_DELETE, P.LEGAL_HOLD, P.APPROVE}),
    Role.QA: frozenset({P.RECORDING_EXPORT, P.RECORDING_DELETE, P.LEGAL_HOLD, P.APPROVE}),
    Role.SUPERVISOR: frozenset({P.APPROVE}),
    Role.AUDITOR: frozenset(set(Permission) - {P.AUDIT_READ, P.AUDIT_VERIFY}),
}


class PermissionDenied(PermissionError):
    def __init__(self, role: str, permission: str) -> None:
        super().__init__(f"role {role} may not {permission}")
        self.role = role
        self.permission = permission


class AccessPolicy:
    """The permission matrix, checked once at load time and then read-only."""

    __slots__ = ("_grants",)

    def __init__(self, grants: Mapping[Role, frozenset[Permission]]) -> None:
        self._grants = dict(grants)

    @classmethod
    def from_dict(cls, matrix: Mapping[str, Iterable[str]] | None = None) -> AccessPolicy:
        """`{"agent": ["calls.handle", ...], ...}`; roles left out get the default row."""
        merged: dict[str, Iterable[str]] = dict(DEFAULT_MATRIX)
        merged.update(matrix or {})
        grants: dict[Role, frozenset[Permission]] = {}
        for role_name, names in merged.items():
            path = f"access.roles.{role_name}"
            try:
                role = Role(role_name)
            except ValueError:
                raise ValueError(f"{path}: unknown role") from None
            perms = set()
            for i, name in enumerate(names):
                try:
                    perms.add(Permission(name))
                except ValueError:
                    raise ValueError(f"{path}[{i}]: unknown permission {name!r}") from None
            bad = perms & _FORBIDDEN.get(role, frozenset())
            if bad:
                raise ValueError(f"{path}: role {role} may never hold {sorted(bad)}")
            grants[role] = frozenset(perms)
        return cls(grants)

    def allows(self, role: str, permission: str) -> bool:
        try:
            return Permission(permission) in self._grants.get(Role(role), frozenset())
        except ValueError:
            return False

    def require(self, role: str, permission: str) -> None:
        if not self.allows(role, permission):
            raise PermissionDenied(role, permission)

    def permissions(self, role: str) -> frozenset[Permission]:
        return self._grants.get(Role(role), frozenset())

    @staticmethod
    def needs_approval(permission: str) -> bool:
        return permission in NEEDS_APPROVAL

    @staticmethod
    def needs_mfa(role: str) -> bool:
        return role in MFA_ROLES
