"""The operator's command line (``rastau``), in process: help for every command without settings or a database, and a
command line that cannot be right is refused with status 2, naming the option, before anything runs."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from core.cli import main as rastau

COMMANDS = ["migrate", "audit-verify", "audit-checkpoint", "add-clinic", "add-doctor", "add-admin", "add-api-key",
            "list-api-keys", "revoke-api-key", "add-auditor", "list-auditors", "remove-auditor", "payer-events",
            "verify-export", "import-deaths", "service-rules", "flags", "purge"]


def test_help_lists_the_commands_in_the_order_an_operator_meets_them():
    done = CliRunner().invoke(rastau, ["-h"], prog_name="rastau")
    assert done.exit_code == 0, done.output
    listed = [line.split()[0] for line in done.output.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command):
    done = CliRunner().invoke(rastau, [command, "--help"], prog_name="rastau")
    assert done.exit_code == 0, done.output
    assert f"Usage: rastau {command}" in done.output


def test_key_options_say_what_they_take():
    text = CliRunner().invoke(rastau, ["add-api-key", "-h"], prog_name="rastau").output
    for words in ("--clinic ID", "clinic_system", "webcam", "admin", "--doctor ID", "--label", "--expires-in 90d|12h",
                  "[default: never]"):
        assert words in text, words


@pytest.mark.parametrize("argv, option", [
    ([], "COMMAND"),
    (["add-api-key", "--clinic", "1", "--scope", "root"], "--scope"),
    (["add-api-key", "--clinic", "one", "--scope", "admin"], "--clinic"),
    (["add-doctor", "--clinic", "1", "--name", "A"], "--phone"),
    (["add-clinic"], "NAME"),
])
def test_a_wrong_command_line_exits_2_naming_what_is_wrong(argv, option):
    done = CliRunner().invoke(rastau, argv, prog_name="rastau")
    assert done.exit_code == 2 and option in done.output, done.output

