"""Settings the publisher tests share: the Graph API version and container polling fast enough for tests."""

from __future__ import annotations

from publishers.instagram import ContainerPolling

GRAPH_VERSION = "v24.0"
# Tests poll containers every few milliseconds; production polls in seconds.
FAST_POLLING = ContainerPolling(interval_s=0.005, max_interval_s=0.02, timeout_s=2.0, publish_retries=2)
