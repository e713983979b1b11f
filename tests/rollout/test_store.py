from __future__ import annotations

import pytest

from streamproc.errors import DeploymentError
from streamproc.rollout.state import Deploy, Promote, Status, apply
from streamproc.rollout.store import ControlStore, InMemoryControlStore, execute


def test_in_memory_store_keeps_history_and_refuses_stale_states():
    store: ControlStore = InMemoryControlStore()
    assert store.latest("fraud") is None and store.history("fraud") == [] and store.names() == []
    first = execute(store, Deploy("fraud", "1.0.0", at_ms=1))
    execute(store, Deploy("fraud", "1.1.0", at_ms=2))
    done = execute(store, Promote("fraud", at_ms=3))
    assert store.latest("fraud") == done and done.status is Status.PROMOTED
    assert [s.revision for s in store.history("fraud")] == [1, 2, 3]
    with pytest.raises(DeploymentError, match="stale"):
        store.publish(first)
    with pytest.raises(DeploymentError, match="stale"):
        store.publish(apply(first, Deploy("fraud", "2.0.0", at_ms=4)))  # revision 2 again
    execute(store, Deploy("other", "0.1.0", at_ms=5))
    assert store.names() == ["fraud", "other"]
    # a refused command publishes nothing
    with pytest.raises(DeploymentError):
        execute(store, Promote("fraud", at_ms=6))
    assert store.latest("fraud").revision == 3
