"""Semantic versions (https://semver.org 2.0.0): parse, order by precedence, bump.

Precedence follows the specification: MAJOR, MINOR and PATCH compare numerically; a
pre-release ranks below its release; pre-release identifiers compare one by one, numeric
ones numerically and below alphanumeric ones, which compare in ASCII order; a longer list
of identifiers wins when all before it are equal. Build metadata is kept but ignored for
ordering and equality (``1.0.0+a == 1.0.0+b``).

>>> sorted(Version.parse(v) for v in ["1.0.0", "1.0.0-rc.1", "1.0.0-alpha", "1.0.0-alpha.1",
...                                   "1.0.0-alpha.beta", "1.0.0-beta.11", "1.0.0-beta.2"])
... # doctest: +NORMALIZE_WHITESPACE
[Version('1.0.0-alpha'), Version('1.0.0-alpha.1'), Version('1.0.0-alpha.beta'),
 Version('1.0.0-beta.2'), Version('1.0.0-beta.11'), Version('1.0.0-rc.1'), Version('1.0.0')]
>>> str(Version.parse("1.4.2").bump("minor")), str(Version.parse("2.0.0-rc.1").bump("prerelease"))
('1.5.0', '2.0.0-rc.2')
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from streamproc.errors import ModelError
from streamproc.models.spec import SEMVER

Part = Literal["major", "minor", "patch", "prerelease"]


def _identifier_key(ident: str) -> tuple[int, int, str]:
    # Numeric identifiers rank below alphanumeric ones (semver 11.4.3).
    return (0, int(ident), "") if ident.isdigit() else (1, 0, ident)


@functools.total_ordering
@dataclass(frozen=True, slots=True, eq=False)
class Version:
    """A parsed semantic version; compare with ``<``, sort, use as a dict key."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | Version) -> Version:
        """Parse ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]``; :class:`ModelError` if invalid.

        >>> Version.parse("1.2.3-rc.1+sha.5114f85")
        Version('1.2.3-rc.1+sha.5114f85')
        >>> Version.parse("01.2.3")
        Traceback (most recent call last):
        ...
        streamproc.errors.ModelError: '01.2.3' is not a semantic version (MAJOR.MINOR.PATCH)
        """
        if isinstance(text, Version):
            return text
        m = SEMVER.match(text) if isinstance(text, str) else None
        if m is None:
            raise ModelError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        pre, build = m.group(4), m.group(5)
        return cls(
            int(m.group(1)),
            int(m.group(2)),
            int(m.group(3)),
            tuple(pre.split(".")) if pre else (),
            tuple(build.split(".")) if build else (),
        )

    @staticmethod
    def is_valid(text: str) -> bool:
        return SEMVER.match(text) is not None

    @property
    def precedence(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        """The sort key: a release ranks above each of its pre-releases."""
        return (
            self.major,
            self.minor,
            self.patch,
            0 if self.prerelease else 1,
            tuple(_identifier_key(i) for i in self.prerelease),
        )

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.precedence == other.precedence

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.precedence < other.precedence

    def __hash__(self) -> int:
        return hash(self.precedence)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def __repr__(self) -> str:
        return f"Version({str(self)!r})"

    def bump(self, part: Part) -> Version:
        """The next version; build metadata is dropped.

        A pre-release bumps to its own release when that is the requested part
        (``2.0.0-rc.1`` -> major -> ``2.0.0``); ``prerelease`` increments the last numeric
        identifier, appends ``.0`` after a word, or starts ``-0`` on the next patch.

        >>> [str(Version.parse(v).bump(p)) for v, p in [("1.2.3", "major"), ("1.2.3", "patch"),
        ...     ("1.2.3", "prerelease"), ("1.3.0-beta", "prerelease"), ("1.3.0-beta", "minor")]]
        ['2.0.0', '1.2.4', '1.2.4-0', '1.3.0-beta.0', '1.3.0']
        """
        pre = self.prerelease
        if part == "major":
            if pre and self.minor == 0 and self.patch == 0:
                return Version(self.major, 0, 0)
            return Version(self.major + 1, 0, 0)
        if part == "minor":
            if pre and self.patch == 0:
                return Version(self.major, self.minor, 0)
            return Version(self.major, self.minor + 1, 0)
        if part == "patch":
            if pre:
                return Version(self.major, self.minor, self.patch)
            return Version(self.major, self.minor, self.patch + 1)
        if part == "prerelease":
            if not pre:
                return Version(self.major, self.minor, self.patch + 1, ("0",))
            if pre[-1].isdigit():
                return Version(
                    self.major, self.minor, self.patch, (*pre[:-1], str(int(pre[-1]) + 1))
                )
            return Version(self.major, self.minor, self.patch, (*pre, "0"))
        raise ModelError(f"unknown version part {part!r} (major, minor, patch, prerelease)")


def parse(text: str) -> Version:
    """Shorthand for :meth:`Version.parse`."""
    return Version.parse(text)


def sort_versions(texts: list[str]) -> list[str]:
    """Version strings in ascending precedence.

    >>> sort_versions(["1.10.0", "1.9.0", "1.10.0-rc.1"])
    ['1.9.0', '1.10.0-rc.1', '1.10.0']
    """
    return sorted(texts, key=lambda t: Version.parse(t).precedence)
