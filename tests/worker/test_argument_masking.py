"""`agentpool-worker` and `agentpool-operator` take no arguments; the line that refuses one
masks the password of a Redis URL given as one (`--redis-url redis://user:pw@host`)."""

from __future__ import annotations

import pytest

from agentpool.entrypoint import EXIT_CONFIG, take_no_arguments

URL = "redis://default:s3cretpw@h:1/0"


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        take_no_arguments(list(argv), prog="agentpool-worker", description="A worker.",
                          variables=[], exit_status="0: stopped.", env_prefix="AGENTPOOL_")
    assert exited.value.code == EXIT_CONFIG
    return capsys.readouterr().err


def test_an_argument_holding_a_url_is_echoed_with_its_password_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert refused(capsys, "--redis-url", URL) == (
        "agentpool-worker takes no arguments (got '--redis-url redis://default:***@h:1/0'): "
        "configure it with AGENTPOOL_* environment variables (see --help)\n")


def test_argparse_s_own_error_masks_it_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert refused(capsys, f"--help={URL}") == (
        "agentpool-worker: argument -h/--help: ignored explicit argument "
        "'redis://default:***@h:1/0' (see --help)\n")
