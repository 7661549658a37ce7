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


def test_an_abandoned_tensorstore_write_is_not_printed_but_captured(asyncio_records):
    logger, printed = asyncio_records
    capture = run_checkpoint._ErrorCapture()
    run_checkpoint._ORBAX_ERRORS.captures.append(capture)
    try:
        _log_error(logger, ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device "
                                      "[tensorstore_spec='{\"driver\":\"zarr\"}'] [os_error_code='28']"))
    finally:
        run_checkpoint._ORBAX_ERRORS.captures.remove(capture)
    assert printed == []
    assert "No space left" in str(capture.first())


def test_other_asyncio_errors_still_print(asyncio_records):
    logger, printed = asyncio_records
    _log_error(logger, ValueError("something else went wrong"))
    assert [r.getMessage() for r in printed] == ["Future exception was never retrieved"]
