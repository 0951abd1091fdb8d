"""gs:// set-up: point Beam's FileSystems at a local GCS emulator without the 26 s credential search.

Beam's `GCSFileSystem` builds a google-cloud-storage client through
`apache_beam.internal.gcp.auth.get_service_credentials`, which calls `google.auth.default()` under
an exponential-backoff retry (4 retries from 2 s). With no credentials on the machine that costs
about 26 s per process (measured here) before Beam falls back to anonymous access, and there is no
pipeline option that turns the search off for GCS (`--no_auth` is read only by the Dataflow client).

When `STORAGE_EMULATOR_HOST` is set, `use_emulator_credentials()` answers that search the supported
way: it writes an Application Default Credentials file (the documented `authorized_user` format)
holding a static placeholder access token that never expires, and points
`GOOGLE_APPLICATION_CREDENTIALS` at it. `google.auth.default()` then returns at once without any
network call, and google-cloud-storage, which sends every request to the emulator when
`STORAGE_EMULATOR_HOST` is set, sends that placeholder only there. Nothing in Beam is patched; the
environment variables are inherited by worker processes started afterwards. Without the emulator
variable, or when real credentials are configured, it does nothing.

    STORAGE_EMULATOR_HOST=http://127.0.0.1:9023 python -c "from pipelines import gcs; \
gcs.use_emulator_credentials(); from apache_beam.io.filesystems import FileSystems; \
print(FileSystems.match(['gs://bucket/*'])[0].metadata_list)"
"""

from __future__ import annotations

import json
import os
import tempfile
import threading

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
CREDENTIALS_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"
PROJECT_VARIABLE = "GOOGLE_CLOUD_PROJECT"
# The project name google.auth reports for the emulator (it only silences a "no project" warning).
EMULATOR_PROJECT = "distillery-emulator"

_lock = threading.Lock()


def is_gcs_path(path: str) -> bool:
    """Whether `path` is a gs:// URL."""
    return path.startswith("gs://")


def emulator_host() -> str | None:
    """The GCS emulator endpoint from STORAGE_EMULATOR_HOST, or None when talking to real GCS."""
    return os.environ.get(EMULATOR_VARIABLE) or None


def use_emulator_credentials() -> str | None:
    """Makes Beam's GCS credential lookup instant when a GCS emulator is in use.

    Idempotent and cheap: call it before the first gs:// access of a process (the source readers
    call it themselves). Does nothing unless STORAGE_EMULATOR_HOST is set, and never replaces
    credentials the user configured (GOOGLE_APPLICATION_CREDENTIALS already set).

    Returns:
      The path of the placeholder credentials file in use, or None when nothing was done.
    """
    if not emulator_host():
        return None
    with _lock:
        configured = os.environ.get(CREDENTIALS_VARIABLE)
        if configured:
            return configured if _is_placeholder(configured) else None
        directory = tempfile.mkdtemp(prefix="distillery-gcs-emulator-")
        path = os.path.join(directory, "application_default_credentials.json")
        placeholder = {
            "type": "authorized_user",
            "client_id": "gcs-emulator",
            "client_secret": "gcs-emulator",
            "refresh_token": "gcs-emulator",
            # A valid access token with a far expiry: google-auth never tries to refresh it.
            "token": "gcs-emulator",
            "expiry": "2999-01-01T00:00:00Z",
        }
        with open(path, "w", encoding="utf-8") as file:
            json.dump(placeholder, file)
        os.environ[CREDENTIALS_VARIABLE] = path
        os.environ.setdefault(PROJECT_VARIABLE, EMULATOR_PROJECT)
        return path


def _is_placeholder(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file).get("client_id") == "gcs-emulator"
    except (OSError, ValueError, AttributeError):
        return False
