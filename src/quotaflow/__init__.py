"""quotaflow: a real-time online charging system (OCS / 5G CHF) for prepaid and shared quotas."""

__version__ = "0.1.0"
