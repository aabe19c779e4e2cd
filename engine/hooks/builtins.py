"""The plug-ins that ship with vaultpbx, registered by name (they still must be enabled).

  registry = HookRegistry()
  register_builtins(registry)
  registry.enable(config.hooks.enabled)     # e.g. ["maskers", "my-crm-masker"]

The audit observer is not listed here: it needs the open AuditLog, so runtime attaches it with
`AuditObserver(log, clock=time.time).attach(registry)`.
"""

from __future__ import annotations

from . import maskers
from .registry import HookRegistry

BUILTINS = {
    "maskers": maskers.setup,
}


def register_builtins(registry: HookRegistry) -> HookRegistry:
    for name, setup in BUILTINS.items():
        registry.register_builtin(name, setup)
    return registry
