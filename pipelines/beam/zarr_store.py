"""A zarr store on Beam's FileSystems: zarr arrays on gs:// (or any filesystem Beam has)
through the same client, credentials and emulator as every other read and write.

Local paths stay zarr's own LocalStore (:func:`store_for` returns the path itself). Each key
is one object; blocking calls run in worker threads so zarr's concurrent chunk reads and
writes overlap.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest

_RAW = CompressionTypes.UNCOMPRESSED


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def store_for(path: str, read_only: bool = False):
    """What to hand ``zarr.open*`` for the store at ``path``: the path when it is local, a
    :class:`FileSystemsStore` otherwise."""
    return path.removeprefix("file://") if is_local(path) else FileSystemsStore(path, read_only=read_only)


class FileSystemsStore(Store):
    supports_writes = True
    supports_deletes = True
    supports_listing = True
    supports_partial_writes = False

    def __init__(self, root: str, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.root = root.rstrip("/")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileSystemsStore) and (self.root, self.read_only) == (other.root, other.read_only)

    def __str__(self) -> str:
        return self.root

    def with_read_only(self, read_only: bool = False) -> FileSystemsStore:
        return FileSystemsStore(self.root, read_only=read_only)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def _read(self, key: str, byte_range: ByteRequest | None) -> bytes | None:
        path = self._path(key)
        try:
            with FileSystems.open(path, compression_type=_RAW) as handle:
                if byte_range is None:
                    return handle.read()
                if isinstance(byte_range, RangeByteRequest):
                    handle.seek(byte_range.start)
                    return handle.read(byte_range.end - byte_range.start)
                if isinstance(byte_range, OffsetByteRequest):
                    handle.seek(byte_range.offset)
                    return handle.read()
                if isinstance(byte_range, SuffixByteRequest):
                    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
                    handle.seek(max(0, size - byte_range.suffix))
                    return handle.read()
                raise TypeError(f"unknown byte range {byte_range!r}")
        except Exception:  # noqa: BLE001 -- each filesystem has its own "not found"; ask it
            if not FileSystems.exists(path):
                return None
            raise

    def _write(self, key: str, data: bytes) -> None:
        with FileSystems.create(self._path(key), compression_type=_RAW) as handle:
            handle.write(data)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if FileSystems.exists(path):
            FileSystems.delete([path])

    def _keys(self, prefix: str) -> list[str]:
        start = self.root + "/"
        matched = FileSystems.match([f"{start}{prefix}**"])[0].metadata_list
        return sorted(m.path[len(start):] for m in matched)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        data = await asyncio.to_thread(self._read, key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(FileSystems.exists, self._path(key))

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        await asyncio.to_thread(self._write, key, value.to_bytes())

    async def delete(self, key: str) -> None:
        self._check_writable()
        await asyncio.to_thread(self._delete, key)

    async def list(self) -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._keys, ""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._keys, prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        start = f"{prefix}/" if prefix else ""
        names = {key[len(start):].split("/", 1)[0] for key in await asyncio.to_thread(self._keys, start)}
        for name in sorted(names):
            yield name
