"""Where an episode store lives: a local directory, or any zarr/fsspec location.

`store_location` turns what a user passes -- a path, a `file://` URL, an fsspec URL such as
`memory://x.zarr` or `s3://bucket/x.zarr`, or a zarr store object -- into either a `Path` (local:
the store keeps its rename-based atomic publishing and flock writer lock) or a
`RemoteLocation`, which offers the few key/value operations the store needs on object storage.

Object storage has no rename and no OS lock, so there:
- every chunk and metadata object is written with one PUT (old or new, never torn), and the
  store's commit order (marker, steps, columns, end) gives the same commit point as on disk;
- a new store is written in place with its root attributes last: until then it does not open
  as a robolearn store;
- the single-writer lock is a lock object created with a conditional PUT (`If-None-Match: *`
  on S3), holding the writer's host, pid and a lease that the writer renews as it appends. A
  second writer gets StoreLockedError naming the holder; a writer that died (SIGKILL leaves the
  object behind) blocks others until its lease runs out, then the next writer takes over and
  trims the dead writer's uncommitted tail.

S3 credentials and endpoints come from the usual AWS variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ...) or from `storage_options`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

LOCK_LEASE_S = float(os.environ.get("ROBOLEARN_LOCK_LEASE_S", "60"))


class RemoteLocation:
    """A store on a zarr/fsspec location: an fsspec URL (with storage options) or a zarr store object."""

    def __init__(self, url: str | None = None, store: Any = None, storage_options: dict[str, Any] | None = None) -> None:
        if (url is None) == (store is None):
            raise ValueError("give a URL or a zarr store object")
        self.url = url.rstrip("/") if url else f"<{type(store).__name__} {id(store):x}>"
        self.storage_options = dict(storage_options or {})
        if url and not url.startswith("memory://"):
            # other processes write the same bucket: never answer "does this chunk exist" from a stale listing
            self.storage_options.setdefault("use_listings_cache", False)
        self._store = store
        self._rw: Any = None
        self._listings: dict[str, set[str]] = {}

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemoteLocation({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteLocation) and (self.url, self._store) == (other.url, other._store)

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    # ------------------------------------------------------------------ zarr access
    def zarr_store(self, read_only: bool = False) -> Any:
        """The zarr store object for this location."""
        if self._store is not None:
            if read_only and not self._store.read_only and hasattr(self._store, "with_read_only"):
                return self._store.with_read_only(True)
            return self._store
        from zarr.storage import FsspecStore

        if read_only:
            return FsspecStore.from_url(self.url, storage_options=self.storage_options or None, read_only=True)
        if self._rw is None:
            self._rw = FsspecStore.from_url(self.url, storage_options=self.storage_options or None, read_only=False)
        return self._rw

    def open_group(self, mode: str) -> Any:
        """The root zarr group (`mode` as zarr.open_group: r, r+, w-)."""
        import zarr

        return zarr.open_group(self.zarr_store(read_only=mode == "r"), mode=mode)

    # ------------------------------------------------------------------ key/value operations
    def _kv(self) -> Any:
        return self.zarr_store(read_only=False) if self._store is None or not self._store.read_only else self._store

    def get(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = sync(self._kv().get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def set(self, key: str, data: bytes) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        sync(self._kv().set(key, default_buffer_prototype().buffer.from_bytes(data)))

    def exists(self, key: str) -> bool:
        from zarr.core.sync import sync

        return bool(sync(self._kv().exists(key)))

    def delete(self, key: str) -> None:
        from zarr.core.sync import sync

        sync(self._kv().delete(key))

    def list(self, prefix: str = "") -> list[str]:
        from zarr.core.sync import sync

        async def collect() -> list[str]:
            return [k async for k in self._kv().list_prefix(prefix)]

        return sync(collect())

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write `key` only if absent, in one conditional request where the backend has one."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        store = self._kv()
        fs = getattr(store, "fs", None)
        if fs is not None and hasattr(fs, "_pipe_file"):
            try:
                sync(fs._pipe_file(f"{store.path}/{key}", data, mode="create"))
            except FileExistsError:
                return False
            except OSError as exc:  # some backends report a failed precondition as EINVAL / 412
                if "precondition" in str(exc).lower() or "412" in str(exc):
                    return False
                raise
            return True
        if self.exists(key):
            return False
        sync(store.set_if_not_exists(key, default_buffer_prototype().buffer.from_bytes(data)))
        return True

    def is_empty(self) -> bool:
        """No object at all under this location (stops at the first one)."""
        from zarr.core.sync import sync

        async def first() -> bool:
            async for _ in self._kv().list_prefix(""):
                return False
            return True

        return sync(first())

    def clear(self) -> None:
        """Delete every object of the store (overwrite)."""
        for key in self.list(""):
            self.delete(key)

    def is_group(self) -> bool:
        raw = self.get("zarr.json")
        if raw is None:
            return False
        try:
            return json.loads(raw).get("node_type") == "group"
        except ValueError:
            return False

    def has_chunk(self, array: Any, chunk_index: int) -> bool:
        """Whether chunk `chunk_index` (along time) of `array` exists; one listing per array, re-listed on a miss."""
        tail = (0,) * (len(array.shape) - 1)
        key = f"{array.path}/{array.metadata.encode_chunk_key((chunk_index, *tail))}"
        keys = self._listings.get(array.path)
        if keys is not None and key in keys:
            return True
        keys = set(self.list(array.path + "/"))
        self._listings[array.path] = keys
        return key in keys


def is_remote(path: Any) -> bool:
    return isinstance(path, RemoteLocation)


def store_location(path: Any, storage_options: dict[str, Any] | None = None) -> Path | RemoteLocation:
    """A local `Path` or a `RemoteLocation` for a path, URL or zarr store object."""
    if isinstance(path, RemoteLocation):
        return path
    if isinstance(path, Path):
        return path
    if isinstance(path, str):
        if "://" not in path:
            return Path(path)
        parsed = urlparse(path)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"file URL {path!r} names host {parsed.netloc!r}; use file:///absolute/path")
            return Path(unquote(parsed.path))
        return RemoteLocation(url=path, storage_options=storage_options)  # memory://, s3://, gs://, ...
    try:
        from zarr.abc.store import Store
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr is a dependency
        Store = LocalStore = ()  # type: ignore[assignment]
    if isinstance(path, LocalStore):
        return Path(str(path.root))
    if isinstance(path, Store):
        return RemoteLocation(store=path)
    if isinstance(path, os.PathLike):
        return Path(path)
    raise TypeError(f"a store location is a path, a URL or a zarr store, not {type(path).__name__}")


class RemoteLock:
    """The single-writer lock on object storage: a lock object with a renewable lease."""

    KEY = ".robolearn.lock"

    def __init__(self, location: RemoteLocation, lease_s: float | None = None) -> None:
        self.location = location
        self.lease_s = LOCK_LEASE_S if lease_s is None else lease_s
        self.token = uuid.uuid4().hex
        self._renewed = 0.0

    def _payload(self) -> bytes:
        now = time.time()
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "renewed": now, "expires": now + self.lease_s}).encode()

    def _holder(self) -> dict[str, Any] | None:
        raw = self.location.get(self.KEY)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"token": "?", "expires": 0.0}

    @classmethod
    def acquire(cls, location: RemoteLocation, lease_s: float | None = None) -> "RemoteLock":
        from robolearn.data.store import StoreLockedError

        lock = cls(location, lease_s)
        for _ in range(2):
            if location.create_exclusive(cls.KEY, lock._payload()):
                holder = lock._holder()
                if holder and holder.get("token") == lock.token:
                    lock._renewed = time.monotonic()
                    return lock
            holder = lock._holder()
            if holder is None:
                continue  # released between our attempt and the read: try once more
            if float(holder.get("expires", 0.0)) < time.time():
                location.delete(cls.KEY)  # the holder's lease ran out (it died): take over
                continue
            since = time.strftime("%H:%M:%S", time.localtime(float(holder.get("renewed", 0.0))))
            left = float(holder.get("expires", 0.0)) - time.time()
            raise StoreLockedError(
                f"{location} is being written by {holder.get('host', '?')} pid {holder.get('pid', '?')} (lock object "
                f"{cls.KEY}, renewed {since}): object storage has no OS lock, so one writer at a time holds a lease; "
                f"if that writer died, its lease ends in {max(left, 0):.0f} s")
        raise StoreLockedError(f"{location}: could not take the writer lock (another writer took it first)")

    def renew(self) -> None:
        """Before each write: still ours? Extend the lease when a third of it has passed."""
        from robolearn.data.store import StoreLockedError

        if time.monotonic() - self._renewed < self.lease_s / 3:
            return
        holder = self._holder()
        if holder is None or holder.get("token") != self.token:
            raise StoreLockedError(f"{self.location}: this writer lost its lock (its lease ran out and another writer "
                                   "took over); reopen the store")
        self.location.set(self.KEY, self._payload())
        self._renewed = time.monotonic()

    def release(self) -> None:
        try:
            holder = self._holder()
            if holder is not None and holder.get("token") == self.token:
                self.location.delete(self.KEY)
        except Exception:  # the lease runs out by itself
            pass


@contextlib.contextmanager
def local_s3_server(bucket: str = "robolearn", port: int | None = None, timeout_s: float = 30.0) -> Iterator[str]:
    """An S3-compatible HTTP endpoint on 127.0.0.1 for tests and benchmarks (moto's server, dev extra).

    Starts `python -m moto.server` in its own process, creates `bucket`, points the AWS variables
    of this process (and its children) at it with dummy credentials, and yields the endpoint URL.
    Nothing leaves the machine; the server stops when the block ends.
    """
    import subprocess
    import sys

    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in names}
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {proc.returncode} (pip install 'moto[server]')")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout_s:.0f} s") from None
                time.sleep(0.1)
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
