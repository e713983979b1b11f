"""Watching a worker: its CPU and memory, the output topic's count, reading topics back,
and stopping it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid

import numpy as np
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from .config import PARTITIONS


class Sampler(threading.Thread):
    """Samples a process's CPU seconds and RSS, and the machine's busy CPU, every period."""

    def __init__(self, pid: int, others: list[int], period_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.others = [psutil.Process(p) for p in others if psutil.pid_exists(p)]
        self.period_s = period_s
        self.samples: list[tuple[float, float, int, float, float]] = []
        self.hwm = 0  # VmHWM: the process's own peak RSS (bytes), read every 10th sample
        self._halt = threading.Event()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        c = p.cpu_times()
        return c.user + c.system

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.is_set():
            try:
                t = time.time()
                cpu = self._cpu(self.proc)
                rss = self.proc.memory_info().rss
                sys_t = psutil.cpu_times()
                busy = sys_t.user + sys_t.nice + sys_t.system + sys_t.irq + sys_t.softirq
                known = sum(self._cpu(o) for o in self.others) + self._cpu(me)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                break
            self.samples.append((t, cpu, rss, busy, known))
            if len(self.samples) % 10 == 1:
                self.hwm = max(self.hwm, _vm_hwm(self.proc.pid))
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def at(self, t: float, column: int) -> float:
        """A sampled column linearly interpolated at wall time ``t``."""
        if not self.samples:
            return float("nan")
        ts = np.array([s[0] for s in self.samples])
        vs = np.array([s[column] for s in self.samples], dtype=np.float64)
        return float(np.interp(t, ts, vs))

    def peak_rss(self) -> int:
        """The worker's own peak RSS: VmHWM (last read) or the largest sample."""
        return max(self.hwm, max((s[2] for s in self.samples), default=0))


def _vm_hwm(pid: int) -> int:
    """``VmHWM`` from /proc/<pid>/status in bytes (0 when unreadable).

    Not ``ru_maxrss`` from ``wait4``: Linux carries the high-water mark across ``execve``,
    and a child started by vfork/fork inherits the harness's own peak that way.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Outputs:
    """Counts and reads an output topic (4 partitions)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        group = f"w-{uuid.uuid4().hex[:8]}"
        self.watch = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self.parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self._last = 0

    def count(self) -> int:
        """Records in the topic (high watermarks); the last count on a transient error
        (a new topic's leadership may not have propagated yet)."""
        total = 0
        try:
            for tp in self.parts:
                _, high = self.watch.get_watermark_offsets(tp, timeout=5, cached=False)
                total += max(high, 0)
        except KafkaException:
            return self._last
        self._last = total
        return total

    def read(self, expected: int) -> list[tuple[int, int, bytes]]:
        """Every record as (append time ms, timestamp type, value)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 10})  # fmt: skip
        c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        out: list[tuple[int, int, bytes]] = []
        idle = 0
        try:
            while len(out) < expected and idle < 3:
                msgs = c.consume(10_000, timeout=1.0)
                if not msgs:
                    idle += 1
                    continue
                idle = 0
                for m in msgs:
                    if m.error() is None:
                        kind, ts = m.timestamp()
                        out.append((ts, kind, m.value() or b""))
        finally:
            c.close()
        return out

    def close(self) -> None:
        self.watch.close()


def wait_for(outputs: Outputs, target: int, deadline: float, proc: subprocess.Popen[bytes]) -> str:
    """'ok' when the topic holds ``target`` records, 'timeout', or 'exited'."""
    while True:
        if outputs.count() >= target:
            return "ok"
        if proc.poll() is not None:
            return "exited"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> tuple[str, int]:
    """SIGTERM, then SIGKILL after ``grace_s``; returns (how it ended, ru_maxrss in KiB).

    ``ru_maxrss`` is kept for reference only: it includes the harness's RSS (see _vm_hwm).
    """
    how = "exited"
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        how = "sigterm"
    deadline = time.monotonic() + grace_s
    while True:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by Popen.poll
            return how, 0
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return how, int(ru.ru_maxrss)
        if time.monotonic() > deadline and how != "sigkill":
            proc.kill()
            how = "sigkill"
        time.sleep(0.05)
