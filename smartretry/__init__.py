"""Smart-retry publishing: publish posts to several platforms and retry only the ones that failed."""

__version__ = "0.1.0"
