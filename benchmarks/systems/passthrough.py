"""(b) The ceiling: consume, produce the raw bytes unchanged; flush and commit like streamproc."""

from __future__ import annotations

from confluent_kafka import Message

from systems.loop import run_loop
from systems.shared import config_from_argv


def identity(msg: Message) -> bytes:
    value = msg.value()
    return value if value is not None else b""


def main() -> None:
    run_loop(config_from_argv(), identity)


if __name__ == "__main__":
    main()
