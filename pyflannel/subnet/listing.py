"""The start-up listing, read once and shared while it arrives.

flanneld needs all leases at start twice over: the subnet manager to choose or reuse a subnet, the
backend to program every peer. Waiting for the whole listing before either starts puts etcd's
encoding, our decoding and the kernel's work in a row; sharing it page by page lets a backend
program the first peers while etcd is still sending the rest (start-up time, issue 6).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from pyflannel.subnet.etcd import Listing, RegistryError
from pyflannel.subnet.lease import Lease


class SharedListing:
    """Pages of one listing for any number of readers, and the whole :class:`Listing` at the end."""

    def __init__(self, pages: AsyncGenerator[Listing, None] | None) -> None:
        self._source = pages
        self._pages: list[Listing] = []
        self._arrived = asyncio.Event()
        self._done = asyncio.Event()
        self._error: RegistryError | None = None
        self._whole: Listing | None = None

    @classmethod
    def of(cls, leases: Sequence[Lease], revision: int = 0) -> SharedListing:
        """A listing that is already complete (tests, and backends driven without etcd)."""
        shared = cls(None)
        shared._pages.append(Listing(list(leases), revision, []))
        shared._done.set()
        return shared

    async def run(self) -> None:
        """Read the pages (one task does this); any error ends the listing as failed."""
        if self._source is None:
            return
        try:
            async with contextlib.aclosing(self._source) as pages:
                async for page in pages:
                    self._pages.append(page)
                    self._arrived.set()
        except RegistryError as e:
            self._error = e
        except (ValueError, TypeError, AttributeError, KeyError) as e:  # a reply we cannot read
            self._error = RegistryError(f"list subnets: {type(e).__name__}: {e}")
        finally:
            self._done.set()
            self._arrived.set()

    async def pages(self) -> AsyncIterator[Listing]:
        """Each page as it arrives; ends with the listing, also when it failed."""
        i = 0
        while True:
            while i < len(self._pages):
                yield self._pages[i]
                i += 1
            if self._done.is_set():
                if i < len(self._pages):
                    continue
                return
            self._arrived.clear()
            await self._arrived.wait()

    async def result(self) -> Listing:
        """The whole listing; :class:`RegistryError` if reading it failed."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        if self._whole is None:  # joined once: the backend and the subnet manager both ask
            leases = [lease for page in self._pages for lease in page.leases]
            bad = [b for page in self._pages for b in page.bad_keys]
            self._whole = Listing(leases, self._pages[-1].revision if self._pages else 0, bad)
        return self._whole
