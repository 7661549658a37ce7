"""A failed background save is reported once by cpt_jax (tests/test_resume.py runs it on a real
full disk); the records orbax's and asyncio's loggers print about the same failure stay off the
terminal, and unrelated errors still reach it."""
import logging

import pytest

from cpt_jax.checkpoint import run_checkpoint


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def asyncio_records():
    run_checkpoint._ORBAX_ERRORS.install()
    logger, handler = logging.getLogger("asyncio"), _Collect()
    logger.addHandler(handler)
    yield logger, handler.records
    logger.removeHandler(handler)


def _log_error(logger, error):
    try:
        raise error
    except ValueError as e:
        logger.error("Future exception was never retrieved", exc_info=e)


@pytest.mark.parametrize("message", [
    ("RESOURCE_EXHAUSTED: Error writing ... No space left on device "
    "[tensorstore_spec='{\"driver\":\"zarr\"}'] [os_error_code='28']"),
    # an OCDBT write's wording names no tensorstore_spec (seen in CI on a full disk)
    ('RESOURCE_EXHAUSTED: Error writing "layers.attn.q/0.6.0.0" in OCDBT database at local file '
    '"/tmp/run/checkpoints/10.orbax-checkpoint-tmp/params.orbax-checkpoint-tmp/ocdbt.process_0/": Failed '
    'writing: "/tmp/run/checkpoints/10.orbax-checkpoint-tmp/params.orbax-checkpoint-tmp/ocdbt.process_0/d/73f2": '
    "Failed to write 1364 bytes to file 5: No space left on device [os_error_code='28']"),
])
def test_an_abandoned_tensorstore_write_is_not_printed_but_captured(asyncio_records, message):
    logger, printed = asyncio_records
    capture = run_checkpoint._ErrorCapture()
    run_checkpoint._ORBAX_ERRORS.captures.append(capture)
    try:
        _log_error(logger, ValueError(message))
    finally:
        run_checkpoint._ORBAX_ERRORS.captures.remove(capture)
    assert printed == []
    assert "No space left" in str(capture.first())


@pytest.mark.parametrize("message", ["something else went wrong", "error: RESOURCE_EXHAUSTED: not a tensorstore status"])
def test_other_asyncio_errors_still_print(asyncio_records, message):
    logger, printed = asyncio_records
    _log_error(logger, ValueError(message))
    assert [r.getMessage() for r in printed] == ["Future exception was never retrieved"]
