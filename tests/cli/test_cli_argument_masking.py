"""A Redis URL given where another argument was wanted carries its password: the one line
that refuses the arguments masks it, as every other message of the CLI does."""

from __future__ import annotations

import pytest

from agentpool.cli.main import main

URL = "redis://default:s3cretpw@redis.example:6379/0"
MASKED = "redis://default:***@redis.example:6379/0"


@pytest.mark.parametrize(("argv", "message"), [
    (["dead", "--redis-url", URL, "-q", "x"],
     f"agentpool dead: argument ACTION: invalid choice: '{MASKED}' (choose from 'list', "
     "'requeue', 'purge') (see agentpool dead --help)"),
    (["tasks", "-s", URL],
     f"agentpool tasks: argument -s/--state: invalid choice: '{MASKED}' (choose from "
     "'queued', 'delayed', 'deferred', 'running', 'dead') (see agentpool tasks --help)"),
    (["tasks", "--redis-url", "redis://127.0.0.1:1/0", "extra", f"--bogus={URL}"],
     f"agentpool tasks: unrecognized arguments: extra --bogus={MASKED} "
     "(see agentpool tasks --help)"),
], ids=["invalid-choice-positional", "invalid-choice-option", "unrecognized"])
def test_an_argument_error_masks_the_password_of_a_url_it_quotes(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str,
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "s3cretpw" not in err
    assert err.startswith(message), err
    assert err.count("\n") == 1
