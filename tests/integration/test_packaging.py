"""The Docker image's install, checked without a Docker engine.

The image (`Dockerfile`) copies a few directories and runs `pip install .`: a wheel built from exactly
those files must hold every module and data file the service loads, and import with nothing of the
checkout (tests, bench, an editable install) on the path. `docker-compose.yml` must only set settings
the service knows, and keep the broker's and the database's data on named volumes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from smartretry.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def image_sources() -> list[str]:
    """The paths the Dockerfile copies into the image, in order."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY":
            sources.extend(parts[1:-1])
    return sources


def test_a_wheel_of_the_images_files_holds_and_imports_the_whole_service(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in image_sources():
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("smartretry-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    data = [p for d in ("smartretry/templates", "smartretry/static", "schemas/json") for p in (ROOT / d).rglob("*")
            if p.is_file()] + [ROOT / "streams/broker/pom.xml"]
    missing = [str(p.relative_to(ROOT)) for p in data if str(p.relative_to(ROOT)) not in names]
    assert not missing, f"data files the service loads are not in the image: {missing}"

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    modules = sorted(name[:-3].replace("/", ".").removesuffix(".__init__") for name in names
                     if name.endswith(".py") and not name.endswith("__main__.py"))
    check = (
        "import importlib, sys\n"
        f"site = {str(site)!r}\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
        "print(len(sys.modules))\n"
    )
    # -S: no .pth files, so the checkout's editable install is not on the path; only the wheel's files
    # and the installed dependencies are.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"],
                                                        sysconfig.get_paths()["platlib"]])}
    for command in (["-c", check], ["-m", "smartretry.cli", "--help"]):
        ran = subprocess.run([sys.executable, "-S", *command], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr[-3000:]
    assert "run" in ran.stdout and "replay" in ran.stdout


def test_the_compose_file_sets_only_settings_the_service_knows() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    known = {f"SMARTRETRY_{name.upper()}" for name in Settings.model_fields} | {"KAFKA_BOOTSTRAP_SERVERS"}
    service = compose[compose.index("\n  smartretry:"):]
    set_here = re.findall(r"^\s+((?:SMARTRETRY_|KAFKA_BOOTSTRAP)\w*):", service, flags=re.MULTILINE)
    assert set_here, "the service's environment was not found"
    assert not [name for name in set_here if name not in known]
    assert {"KAFKA_BOOTSTRAP_SERVERS", "SMARTRETRY_DATABASE_URL"} <= set(set_here)


def compose_service(compose: str, name: str) -> str:
    """One service's block of the compose file (its indented lines)."""
    match = re.search(rf"^  {name}:\n((?:    .*\n|\n)+)", compose, flags=re.MULTILINE)
    assert match, f"service {name} not found"
    return match.group(1)


def test_the_compose_file_keeps_the_events_and_the_database_on_named_volumes() -> None:
    # `docker compose down` removes the containers: the broker's log (the events, the source of truth) and the
    # database must not go with them.
    compose = (ROOT / "docker-compose.yml").read_text()
    declared = re.search(r"^volumes:\n((?:  .*\n)+)", compose, flags=re.MULTILINE)
    assert declared, "no named volumes declared"
    names = set(re.findall(r"^  ([\w-]+):", declared.group(1), flags=re.MULTILINE))
    kafka = compose_service(compose, "kafka")
    log_dirs = re.search(r"KAFKA_LOG_DIRS: (\S+)", kafka)
    assert log_dirs, "the broker's log directory is the image's default, under /tmp"
    for service, directory in (("kafka", log_dirs.group(1)), ("postgres", "/var/lib/postgresql/data")):
        mounts = dict(re.findall(r"^      - ([\w-]+):(\S+)$", compose_service(compose, service), flags=re.MULTILINE))
        assert directory in mounts.values(), f"{service}: {directory} is not on a volume"
        assert {name for name, path in mounts.items() if path == directory} <= names
