"""quotaflow: a real-time online charging system (OCS / 5G CHF) for prepaid and shared quotas."""

__version__ = "0.1.0"

# Before any other quotaflow module is imported: compiled modules, or their source (see _native).
from quotaflow import _native

NATIVE_MODE = _native.MODE
