"""deploy/systemd: `systemd-analyze verify` accepts every unit (templates as an instance),
with the shared drop-in that hardens them all; each runs a real `vestnik` subcommand, is
restarted, reads the env file and sets only settings that exist.

systemd-analyze checks that ExecStart's program exists, and the units name the install
path /opt/vestnik/bin/vestnik: the test verifies copies whose only change is that path,
pointed at a stub it creates (no root, no systemd as PID 1, no network)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from support import ROOT
from vestnik.app.cli import COMMANDS, parser
from vestnik.streams.config import ENV_PREFIX, Config, env_name, load

UNITS = ROOT / "deploy" / "systemd"
DROP_IN = UNITS / "vestnik-.service.d" / "10-hardening.conf"
BIN = "/opt/vestnik/bin/vestnik"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# the instance each template is verified as: a metrics port, or an alert's name
INSTANCES = {"vestnik-center@.service": "9101", "vestnik-forwarder@.service": "9121",
             "vestnik-wrap@.service": "disk-usage"}
KNOWN_ENV = {env_name(f) for f in Config.__struct_fields__} | {ENV_PREFIX + "CONFIG"}


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order; a key may repeat (Environment=)."""
    out, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(path: Path, key: str) -> list[str]:
    return [v for _, k, v in directives(path) if k == key]


def services() -> list[Path]:
    return sorted(UNITS.glob("*.service"))


def instance_name(unit: Path) -> str:
    return unit.name.replace("@.", f"@{INSTANCES[unit.name]}.") if "@." in unit.name \
        else unit.name


def verify(units: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on copies of `units` (instances of the templates)."""
    stub = tmp / "bin" / "vestnik"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp / "units"
    shutil.copytree(units, copy)
    names = []
    for unit in sorted(copy.iterdir()):
        if unit.is_dir():
            continue
        unit.write_text(unit.read_text().replace(BIN, str(stub)))
        if "@." in unit.name:
            shutil.copy2(unit, copy / instance_name(unit))
            names.append(instance_name(unit))
        else:
            names.append(unit.name)
    assert SYSTEMD_ANALYZE
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *names], cwd=copy,
                          capture_output=True, text=True, timeout=120)


needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                   reason="systemd-analyze is not installed (Debian: systemd)")


@needs_systemd
def test_systemd_analyze_accepts_every_unit(tmp_path):
    result = verify(UNITS, tmp_path)
    # a warning (an unknown key, a bad value) is printed with exit 0: none is allowed
    assert result.returncode == 0 and not result.stdout + result.stderr, \
        result.stdout + result.stderr


@needs_systemd
def test_the_check_is_live(tmp_path):
    """A misspelt key in the shared drop-in is caught: the drop-in is read and judged."""
    units = tmp_path / "src"
    shutil.copytree(UNITS, units)
    bad = units / DROP_IN.relative_to(UNITS)
    bad.write_text(bad.read_text().replace("ProtectSystem=", "ProtectSytem=", 1))
    result = verify(units, tmp_path)
    assert "ProtectSytem" in result.stdout + result.stderr


def test_one_unit_per_process_templates_where_several_run():
    by_command = {}
    for unit in services():
        (exec_start,) = values(unit, "ExecStart")
        argv = shlex.split(exec_start.replace("%i", "x").replace("%H", "host"))
        assert argv[0] == BIN
        args = parser().parse_args(argv[1:])
        by_command[args.command] = unit.name
    assert by_command == {
        "api": "vestnik-api.service", "bridge": "vestnik-bridge.service",
        "center": "vestnik-center@.service", "forwarder": "vestnik-forwarder@.service",
        "wrap": "vestnik-wrap@.service"}
    assert set(by_command) <= set(COMMANDS)


def test_every_service_is_hardened_restarted_and_reads_the_env_file():
    shared = {k: v for _, k, v in directives(DROP_IN)}
    assert shared["Restart"] == "always"
    assert shared["EnvironmentFile"] == "/etc/vestnik/vestnik.env"
    assert shared["NoNewPrivileges"] == "yes" and shared["ProtectSystem"] == "strict"
    assert shared["DynamicUser"] == "yes" and shared["CapabilityBoundingSet"] == ""
    for unit in services():
        # nothing in a unit loosens what the drop-in sets (a unit's own key would win)
        # (Environment and EnvironmentFile add to the drop-in's instead of replacing them)
        own = {k for _, k, _ in directives(unit)} - {"Environment", "EnvironmentFile"}
        assert not own & set(shared), f"{unit.name} overrides {own & set(shared)}"
        assert values(unit, "WantedBy") == ["vestnik.target"]


def test_settings_exist():
    """Every VESTNIK_* a unit sets is a Config field with a value the process accepts."""
    for path in [*services(), DROP_IN]:
        for assignment in values(path, "Environment"):
            for pair in shlex.split(assignment):
                key, _, value = pair.partition("=")
                if key == "PATH":
                    continue
                assert key in KNOWN_ENV, f"{path.name}: {key}"
                load({key: value.replace("%i", "9101")})


def test_alert_programs_find_vestniks_python_first():
    """The wrapper hands the alert its own PATH: with Vestnik's bin first, an alert.toml's
    `python` (deploy/alerts/disk-usage.toml's) is the one Vestnik is installed in."""
    (path,) = [p.partition("=")[2] for a in values(UNITS / "vestnik-wrap@.service",
                                                   "Environment")
               for p in shlex.split(a) if p.startswith("PATH=")]
    assert path.split(":")[0] == str(Path(BIN).parent)
