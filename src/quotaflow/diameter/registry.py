"""Which connection serves which peer: one per Origin-Host (RFC 6733 section 5.6.4)."""

from __future__ import annotations

from typing import Generic, TypeVar

H = TypeVar("H")


class PeerRegistry(Generic[H]):
    """Origin-Host (case-insensitive, as DNS names are) to connection handle, bounded."""

    def __init__(self, peers_max: int) -> None:
        assert peers_max > 0
        self._peers_max = peers_max
        self._by_host: dict[str, H] = {}

    def claim(self, origin_host: str, handle: H) -> H | None:
        """Make `handle` the connection of `origin_host`; returns the one it replaces (to be
        closed by the caller). OverflowError when `peers_max` other peers are connected."""
        key = origin_host.lower()
        previous = self._by_host.get(key)
        if previous is None and len(self._by_host) >= self._peers_max:
            raise OverflowError(f"{self._peers_max} peers already connected")
        self._by_host[key] = handle
        return previous if previous is not handle else None

    def release(self, origin_host: str, handle: H) -> None:
        """Forget `handle`, unless a newer connection has already replaced it."""
        key = origin_host.lower()
        if self._by_host.get(key) is handle:
            del self._by_host[key]

    def get(self, origin_host: str) -> H | None:
        return self._by_host.get(origin_host.lower())

    def links(self) -> list[H]:
        return list(self._by_host.values())

    def __len__(self) -> int:
        return len(self._by_host)
