"""The registry edge: an unreachable registry is a clear error, not a transport traceback."""

from __future__ import annotations

import pytest

from streaming.serde import Registry, RegistryUnavailable


def test_an_unreachable_registry_names_its_url():
    registry = Registry("http://127.0.0.1:1/apis/ccompat/v7")  # nothing listens on port 1
    with pytest.raises(RegistryUnavailable, match=r"127\.0\.0\.1:1/apis/ccompat/v7"):
        registry.register("t-value", "review.avsc")
    with pytest.raises(RegistryUnavailable):
        registry.writer_schema(1)
