"""A real GCS JSON-API emulator (`gcp-storage-emulator`, from PyPI) on loopback, for tests of `gs://` paths.

Started and stopped by the test itself (in memory, one bucket, a free port on 127.0.0.1), so the tests run offline.
`environment(url)` is what every client needs to reach it instead of storage.googleapis.com:
  - gcsfs and google-cloud-storage: STORAGE_EMULATOR_HOST;
  - tensorstore's GCS driver (orbax's arrays): TENSORSTORE_GCS_HTTP_URL, plus a fixed token so it does not look for
    credentials (GOOGLE_AUTH_TOKEN_FOR_TESTING);
  - gcsfs's default filesystem asks Storage Control over gRPC whether a bucket is zonal/hierarchical, which the
    emulator does not serve: GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false picks the plain JSON-API filesystem;
  - metadata-server probes (no GCE here) fail at once on a closed loopback port instead of timing out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

BUCKET = "test-bucket"

# gcp-storage-emulator answers a media download without the `x-goog-generation` header real GCS sends; tensorstore
# (orbax's OCDBT manifests are read-modify-written) needs it ("Malformed StorageGeneration"). The launcher adds the
# stored object's generation to every download before the emulator's routes are built; nothing else changes.
_LAUNCHER = r"""
import sys
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj.get("generation") or "1")
        response["x-goog-metageneration"] = str(obj.get("metageneration") or "1")
    except Exception:  # not found: the original handler answers 404
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = download
from gcp_storage_emulator.__main__ import main  # noqa: E402  (after the patch: the routes capture the handler)

sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(url: str) -> dict[str, str]:
    closed = "127.0.0.1:9"  # discard port: nothing listens, so a credentials probe fails immediately
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "EPATH_USE_TF": "false", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "test",
            "GCE_METADATA_HOST": closed, "GCE_METADATA_ROOT": closed, "GCE_METADATA_IP": closed,
            "NO_GCE_CHECK": "True"}


@contextlib.contextmanager
def running(log_path: str | os.PathLike, bucket: str = BUCKET) -> Iterator[str]:
    """Runs the emulator; yields its URL (http://127.0.0.1:PORT); stops it (SIGTERM, then SIGKILL) afterwards."""
    port = _free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--in-memory", "--default-bucket", bucket],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gcp-storage-emulator did not start (see {log_path})") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
