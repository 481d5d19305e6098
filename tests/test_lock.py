"""requirements.lock pins every package `make install` installs (refreshed by `make lock`): what is installed here is
exactly what it says, and what it says meets the ranges the package asks of its users (settings.ini)."""
from configparser import ConfigParser
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict:
    "name (canonical) -> version, from requirements.lock."
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, v = line.partition("==")
            assert v, f"requirements.lock: {line!r} is not name==version"
            pins[canonicalize_name(name)] = v.strip()
    return pins


def settings_requirements() -> list[Requirement]:
    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    keys = ("requirements", "dev_requirements", "no_deps_requirements")
    return [Requirement(r) for k in keys for r in cfg["DEFAULT"].get(k, "").split()]


def test_installed_versions_are_the_locked_ones():
    differ = {}
    for name, want in locked().items():
        try: got = version(name)
        except PackageNotFoundError: got = None
        if got != want: differ[name] = f"locked {want}, installed {got}"
    assert not differ, f"installed packages differ from requirements.lock (run `make install`): {differ}"


def test_the_lock_meets_the_package_requirements():
    pins = locked()
    for req in settings_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (settings.ini) is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), f"requirements.lock has {name}=={pins[name]}, settings.ini asks {req}"


def test_torch_is_the_cpu_build_and_the_package_is_not_locked():
    pins = locked()
    assert pins["torch"].endswith("+cpu") and not any(k.startswith("nvidia-") for k in pins)   # no CUDA wheels pulled in
    assert "rmsecrets" not in pins                                                              # installed from the checkout
