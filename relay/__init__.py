"""relay: accepts events over HTTP and delivers them, signed and retried, to webhooks."""

__version__ = "0.1.0"
