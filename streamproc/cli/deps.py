"""What the commands take from outside, passed one way: a :class:`Deps` as the click
context object. ``main()`` passes the real one; tests pass their own (an in-memory
control store, a clock, a backend loader, an environment, a stack)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import typer

from streamproc.config import KafkaSettings
from streamproc.local.stack import StackInfo
from streamproc.models.performance import Inferer
from streamproc.models.spec import ModelSpec
from streamproc.rollout.ab import ABSource
from streamproc.rollout.store import ControlStore

from .resolve import Resolved, resolve_pipeline


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _running_stack() -> StackInfo | None:
    from streamproc.local import LocalStack

    return LocalStack().status()


def _kafka_store(kafka: KafkaSettings | str, topic: str) -> ControlStore:
    from streamproc.kafka.control import make_store

    return make_store(kafka, topic)


def _load_backend(spec: ModelSpec, prefer: Sequence[str] | None) -> Inferer:
    from streamproc.backends.select import load_backend

    return load_backend(spec, prefer=list(prefer) if prefer else None)


@dataclass
class Deps:
    """Every outside collaborator of the commands, with the real ones as defaults."""

    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stack: Callable[[], StackInfo | None] = _running_stack
    store_factory: Callable[[KafkaSettings | str, str], ControlStore] = _kafka_store
    store: ControlStore | None = None  # one store for every command (tests)
    ab_source: ABSource | None = None
    clock_ms: Callable[[], int] = _now_ms
    loader: Callable[[ModelSpec, Sequence[str] | None], Inferer] = _load_backend
    # Who the deployment commands record as the actor; None: the profile's SASL principal,
    # else the OS user (streamproc.cli.deploy).
    actor: str | None = None

    def pipeline(
        self,
        config: Path | None,
        bootstrap: str | None = None,
        registry: str | None = None,
        need: tuple[str, ...] = ("kafka.bootstrap", "registry.url"),
        strict: bool = True,
        kafka_config: Path | None = None,
    ) -> Resolved:
        return resolve_pipeline(config, bootstrap=bootstrap, registry=registry,
                                kafka_config=kafka_config, env=self.env, stack=self.stack,
                                need=need, strict=strict)  # fmt: skip

    def control_store(self, kafka: KafkaSettings | str, topic: str) -> ControlStore:
        return self.store if self.store is not None else self.store_factory(kafka, topic)


def deps(ctx: typer.Context) -> Deps:
    """The context's :class:`Deps` (the root context's object, whichever group runs)."""
    obj = ctx.find_root().obj
    if isinstance(obj, Deps):
        return obj
    ctx.find_root().obj = made = Deps()
    return made
