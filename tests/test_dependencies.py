"""requirements.lock: every dependency pinned to the release that was tested, none with a known
advisory, and the venv the tests run in installed from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent

# The first release past each known advisory, for dependencies relay names and ones they bring.
ADVISORY_FLOORS = {
    "starlette": ("0.49.1", "CVE-2025-62727: Range header DoS in FileResponse"),
    "cryptography": ("44.0.1", "CVE-2024-26130 (42.0.0-42.0.3), CVE-2024-12797 (bundled OpenSSL)"),
    "aiohttp": ("3.12.14", "CVE-2025-53643: request smuggling in the pure-Python parser"),
    "h11": ("0.16.0", "CVE-2025-43859: request smuggling through chunked bodies"),
    "urllib3": ("2.5.0", "CVE-2025-50181: redirects not disabled by the pool manager"),
    "requests": ("2.32.4", "CVE-2024-47081: .netrc credentials leaked to other hosts"),
    "jinja2": ("3.1.6", "CVE-2025-27516: sandbox escape through |attr"),
}


def _pyproject() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        "runtime": [Requirement(r) for r in project["dependencies"]],
        "test": [Requirement(r) for r in project["optional-dependencies"]["test"]],
    }


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_the_lock_pins_every_dependency_pyproject_names_within_its_range() -> None:
    pins = _pins()
    for kind, requirements in _pyproject().items():
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{kind} dependency {requirement.name} is not in the lock"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"the lock pins {name}=={pins[name]}, outside pyproject's {requirement}"
            )


def _floor(requirement: Requirement) -> Version | None:
    """The lowest release a requirement allows, if it sets one."""
    lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", ">", "==")]
    return max(lows, default=None)


def test_no_pin_nor_pyproject_floor_is_below_a_known_advisory() -> None:
    pins = _pins()
    direct = {canonicalize_name(r.name): r for r in _pyproject()["runtime"]}
    for name, (floor, advisory) in ADVISORY_FLOORS.items():
        if name in pins:
            assert pins[name] >= Version(floor), f"the lock pins {name}=={pins[name]}: {advisory}"
        if name in direct:
            # Installed without the lock, relay must not accept an affected release either.
            lowest = _floor(direct[name])
            assert lowest is not None and lowest >= Version(floor), (
                f"pyproject allows {direct[name]}, below {floor}: {advisory}"
            )
    assert {"starlette", "cryptography", "aiohttp", "h11"} <= set(pins)


def test_the_tests_run_on_exactly_the_locked_releases() -> None:
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()
    }
    wrong = {
        name: (str(pin), str(installed.get(name)))
        for name, pin in _pins().items()
        if installed.get(name) != pin
    }
    assert wrong == {}, f"installed releases differ from the lock (pinned, installed): {wrong}"


def _planned(checkout: Path, target: str) -> list[str]:
    """The install commands `make TARGET` would run in a checkout (`make -n`: none runs)."""
    plan = subprocess.run(
        ["make", "-n", target, "PYTHON=python3"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [line for line in plan if "-m venv" in line or "requirements.lock" in line]


def test_make_run_installs_relay_without_the_test_tooling_and_make_test_adds_it(
    tmp_path: Path,
) -> None:
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    venv = tmp_path / ".venv"
    fresh = "python3 -m venv .venv"
    runtime = ".venv/bin/pip install -q -c requirements.lock -e ."
    tooling = ".venv/bin/pip install -q -c requirements.lock -e '.[test]'"

    def made(path: Path, at: int) -> None:
        """`path` as written `at` seconds after the checkout's files."""
        path.touch()
        when = (ROOT / "requirements.lock").stat().st_mtime + at
        os.utime(path, (when, when))

    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        made(tmp_path / name, 0)
    # A fresh clone: `make run` installs relay alone, `make test` (and so CI) everything.
    assert _planned(tmp_path, "run") == [fresh, runtime]
    assert _planned(tmp_path, "test") == [fresh, runtime, tooling]
    # Once `make run` has installed relay, `make test` adds the tooling to the same venv...
    venv.mkdir()
    made(venv / ".installed-run", 1)
    assert _planned(tmp_path, "run") == []
    assert _planned(tmp_path, "test") == [tooling]
    # ...after which neither installs anything, until the lock changes.
    made(venv / ".installed", 2)
    assert _planned(tmp_path, "test") == _planned(tmp_path, "run") == []
    made(tmp_path / "requirements.lock", 3)
    assert _planned(tmp_path, "run") == [fresh, runtime]
    assert _planned(tmp_path, "test") == [fresh, runtime, tooling]
