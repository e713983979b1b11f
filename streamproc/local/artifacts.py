"""Fetch the broker and registry from Maven Central into the user's cache, once."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from importlib import resources
from pathlib import Path

import platformdirs

from streamproc.errors import ArtifactFetchError

KAFKA_VERSION = "4.1.1"
APICURIO_VERSION = "3.3.3"


def cache_dir() -> Path:
    """``$STREAMPROC_CACHE_DIR`` or the platform's user cache directory."""
    override = os.environ.get("STREAMPROC_CACHE_DIR")
    return Path(override) if override else Path(platformdirs.user_cache_dir("streamproc"))


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ArtifactFetchError(
            "Maven (`mvn`) is not on PATH and the jars are not cached yet; "
            "install Maven (`apt-get install maven`) or copy a populated cache into "
            f"{cache_dir()}"
        )
    return mvn


def _run_mvn(args: list[str], what: str) -> None:
    settings = os.environ.get("STREAMPROC_MAVEN_SETTINGS")  # a mirror or proxy, if needed
    extra = ["-s", settings] if settings else []
    proc = subprocess.run(
        [_mvn(), "-B", "-q", *extra, *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ArtifactFetchError(
            f"could not fetch {what} from Maven Central and nothing is cached in "
            f"{cache_dir()}. Check that Maven Central is reachable (proxy settings in "
            f"~/.m2/settings.xml) and run again. Maven said:\n{tail}"
        )


def kafka_libs() -> Path:
    """Directory holding the Kafka broker jars (fetched on first use)."""
    lib = cache_dir() / f"kafka-{KAFKA_VERSION}-r2" / "lib"  # r2: bump when the pom changes
    marker = lib / ".complete"
    if marker.exists():
        return lib
    tmp = lib.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pom = resources.files("streamproc.local") / "kafka-pom.xml"
    with resources.as_file(pom) as pom_path:
        _run_mvn(
            [
                "-f",
                str(pom_path),
                f"-Dkafka.version={KAFKA_VERSION}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
            ],
            f"Apache Kafka {KAFKA_VERSION}",
        )
    (tmp / ".complete").touch()
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    return lib


def apicurio_app() -> Path:
    """Directory of the unpacked Apicurio Registry distribution (fetched on first use)."""
    home = cache_dir() / f"apicurio-registry-{APICURIO_VERSION}"
    if (home / ".complete").exists():
        return home
    coords = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
    dl = cache_dir() / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    _run_mvn(
        [
            "dependency:copy",
            f"-Dartifact={coords}",
            f"-DoutputDirectory={dl}",
            "-Dmdep.overWriteIfNewer=true",
        ],
        f"Apicurio Registry {APICURIO_VERSION}",
    )
    tarball = dl / f"apicurio-registry-app-{APICURIO_VERSION}-all.tar.gz"
    tmp = home.with_name(home.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / ".complete").touch()
    shutil.rmtree(home, ignore_errors=True)
    tmp.rename(home)
    tarball.unlink(missing_ok=True)  # the unpacked copy is all we need
    return home
