"""gcp-storage-emulator with the GCS object preconditions that tensorstore relies on.

Why: tensorstore's OCDBT driver (orbax's checkpoint format) writes its manifest on the
condition that the object still has the generation it last saw (`ifGenerationMatch`), and
re-reads an object it holds with `ifGenerationNotMatch=<that generation>`. Real GCS answers such
a re-read 304, and every media download carries `x-goog-generation`. gcp-storage-emulator
2026.7.19 honours neither precondition and sends no generation header: the re-read returns 200
without a generation, and tensorstore's next conditional write of the manifest fails with
"Malformed StorageGeneration" (a checkpoint save failed whenever such a re-read happened, which
depends on tensorstore's cache and timing). So this launcher gives the emulator's object
handlers what GCS does (https://cloud.google.com/storage/docs/request-preconditions):

- media downloads and metadata reads: `x-goog-generation` / `x-goog-metageneration` headers;
  a failed `ifGenerationMatch` -> 412, a failed `ifGenerationNotMatch` -> 304;
- media, multipart and resumable uploads and deletes: a failed `ifGenerationMatch` or
  `ifGenerationNotMatch` -> 412 (generation 0 stands for "no such object", so
  `ifGenerationMatch=0` means "must not exist").

The emulator serves one request at a time (http.server.HTTPServer), so a check and the write
after it cannot interleave with another request.

`--deny-writes BUCKET/PREFIX` (a fault for the tests) answers 403, as GCS does without write
permission, to every upload, copy, compose, patch and delete of an object under that prefix.

`--stop-at BUCKET/PREFIX` (a fault for the tests) ends the emulator, unanswered, at the first
write under that prefix: storage that goes away in the middle of a save.

Usage: python tests/gcs_emulator.py [--deny-writes P] [--stop-at P] [gcp-storage-emulator arguments]
"""

from __future__ import annotations

import functools
import os
import sys
from http import HTTPStatus

from gcp_storage_emulator import __main__ as emulator_cli
from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

CONDITION_NOT_MET = {"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
                               "errors": [{"domain": "global", "reason": "conditionNotMet",
                                           "message": "At least one of the pre-conditions you specified did not hold."}]}}


def _current(storage, bucket: str, name: str | None) -> dict | None:
    """The object's resource, or None when there is no such object."""
    if not name:
        return None
    try:
        return storage.get_file_obj(bucket, name)
    except NotFound:
        return None


def _holds(request, obj: dict | None) -> tuple[bool, bool]:
    """(ifGenerationMatch holds, ifGenerationNotMatch holds) for the object (absent: generation 0)."""
    generation = int(obj["generation"]) if obj else 0
    match, not_match = request.query.get("ifGenerationMatch"), request.query.get("ifGenerationNotMatch")
    return (match is None or int(match[0]) == generation), (not_match is None or int(not_match[0]) != generation)


def _refuse(response) -> None:
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json(CONDITION_NOT_MET)


def _read(handler):
    """A download or metadata read: preconditions first, generation headers on the answer."""

    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        obj = _current(storage, request.params["bucket_name"], request.params.get("object_id"))
        if obj is not None:
            match, not_match = _holds(request, obj)
            if not match:
                return _refuse(response)
            if not not_match:
                response.status = HTTPStatus.NOT_MODIFIED
                return None
        result = handler(request, response, storage, *args, **kwargs)
        if obj is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return result

    return wrapped


def _upload_name(request, storage) -> str | None:
    """The name of the object an insert or a resumable upload's chunk writes."""
    if "upload_id" in request.query:
        return storage.get_resumable_file_obj(request.query["upload_id"][0])["name"]
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data if request.query.get("uploadType", [""])[0] in ("multipart", "resumable") else None
    if isinstance(data, dict):
        return (data.get("meta") or data).get("name")
    return None


def _write(handler, name_of):
    """An upload or a delete: refused with 412 when a precondition does not hold."""

    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        if "ifGenerationMatch" in request.query or "ifGenerationNotMatch" in request.query:
            try:
                name = name_of(request, storage)
            except NotFound:
                name = None  # an unknown upload id: the emulator's own 404
            if name is not None and not all(_holds(request, _current(storage, request.params["bucket_name"], name))):
                return _refuse(response)
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


FORBIDDEN = {"error": {"code": 403, "message": "does not have storage.objects.create access",
                       "errors": [{"domain": "global", "reason": "forbidden",
                                   "message": "does not have storage.objects.create access"}]}}


def _target(request, storage) -> str:
    """bucket/name of the object a write request creates, changes or deletes."""
    params = request.params
    if "dest_object_id" in params:  # copyTo, rewriteTo
        return f"{params['dest_bucket_name']}/{params['dest_object_id']}"
    if "object_id" in params:
        return f"{params['bucket_name']}/{params['object_id']}"
    try:
        return f"{params['bucket_name']}/{_upload_name(request, storage) or ''}"
    except NotFound:
        return ""


def _deny(handler, prefix: str):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        if _target(request, storage).startswith(prefix):
            response.status = HTTPStatus.FORBIDDEN
            return response.json(FORBIDDEN)
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


def _stop(handler, prefix: str):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        if _target(request, storage).startswith(prefix):
            os._exit(3)  # gone mid-request: no answer, nothing written
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


def on_writes(prefix: str, fault) -> None:
    """Wrap every handler that writes with `fault` for objects under bucket/prefix (installed
    after `patch`, so the fault answers first)."""
    writers = {objects.insert, objects.upload_partial, objects.xml_upload, objects.delete, objects.patch,
               objects.copy, objects.rewrite, objects.compose}
    wrapped = {h: fault(h, prefix) for h in writers}
    for _, methods in server.HANDLERS:
        for method, handler in methods.items():
            methods[method] = wrapped.get(handler, handler)
    for original, new in wrapped.items():
        setattr(objects, original.__name__, new)


def patch() -> None:
    """Put the wrapped handlers into the emulator's routing table (and its module, which the
    router's fallback for uploads without the /upload prefix reads)."""
    wrapped = {
        objects.download: _read(objects.download),
        objects.get: _read(objects.get),
        objects.insert: _write(objects.insert, _upload_name),
        objects.upload_partial: _write(objects.upload_partial, _upload_name),
        objects.delete: _write(objects.delete, lambda request, storage: request.params["object_id"]),
    }
    for _, methods in server.HANDLERS:
        for method, handler in methods.items():
            methods[method] = wrapped.get(handler, handler)
    for original, new in wrapped.items():
        setattr(objects, original.__name__, new)


if __name__ == "__main__":
    patch()
    argv = sys.argv[1:]
    while argv[:1] in (["--deny-writes"], ["--stop-at"]):
        on_writes(argv[1], _deny if argv[0] == "--deny-writes" else _stop)
        argv = argv[2:]
    emulator_cli.main(argv)
