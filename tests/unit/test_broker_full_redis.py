"""smsq's kombu transports (dispatch/broker.py) in a full Redis (maxmemory, noeviction), on the
real redis-server of the unit tests: a task taken from its queue is held until Redis accepts it
in the unacked set, an acknowledgement is accepted, a task given back that Redis refuses to
queue stays in the unacked set, and a consumer declaring its queues again goes on. kombu's own
transport raises OutOfMemoryError in each."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from kombu import Connection, Exchange, Queue
from redis.exceptions import OutOfMemoryError

from dispatch import broker

QUEUE = Queue("t", Exchange("t", type="direct"), routing_key="t")


@pytest.fixture
def connection(redis_server: Any, real_redis: Any) -> Iterator[Connection]:
    conn = Connection(redis_server.url)
    yield conn
    real_redis.config_set("maxmemory", 0)
    conn.release()


def _full(client: Any) -> None:
    """Any write that needs memory is refused from now on."""
    client.config_set("maxmemory", 1)


def _room(client: Any) -> None:
    client.config_set("maxmemory", 0)


def _take(conn: Connection, body: dict[str, Any], full: Any = None) -> Any:
    """Publish body and consume it (prefetch 1, acknowledged later); full(), if given, runs
    once the consumer is declared, before the task is taken."""
    conn.Producer().publish(body, exchange=QUEUE.exchange, routing_key="t", declare=[QUEUE])
    got: list[Any] = []
    consumer = conn.Consumer(QUEUE, callbacks=[lambda _, message: got.append(message)])
    consumer.qos(prefetch_count=1)
    consumer.consume()
    if full is not None:
        full()
    conn.drain_events(timeout=10)
    assert [m.payload for m in got] == [body]
    return got[0]


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "sentinel://127.0.0.1:1;sentinel://h:2"],
)
def test_the_broker_schemes_name_smsqs_transports(url: str) -> None:
    conn = Connection(url, transport_options={"master_name": "m"})
    expected = broker.SentinelTransport if url.startswith("sentinel") else broker.Transport
    assert conn.transport_cls in ("redis", "rediss", "sentinel")
    assert type(conn.transport) is expected
    assert conn.transport.Channel.QoS is broker.QoS
    # kombu moves to the next sentinel by the URL's scheme: still smsq's transport.
    conn.switch(conn.alt[-1] if conn.alt else url)
    assert type(conn.transport) is expected


def test_a_task_taken_while_redis_is_full_is_held_until_it_is_unacked(
    connection: Connection, real_redis: Any
) -> None:
    freed = threading.Timer(0.5, _room, [real_redis])
    with structlog.testing.capture_logs() as logs:
        message = _take(connection, {"n": 1}, full=lambda: (_full(real_redis), freed.start()))
    freed.join()
    assert "broker_full_task_held" in [e["event"] for e in logs]
    # Out of the queue, in the unacked set: a worker dying now would not lose it.
    assert real_redis.llen("t") == 0
    assert real_redis.hkeys("unacked") == [message.delivery_tag.encode()]
    assert real_redis.zcard("unacked_index") == 1

    # Acknowledged in a full Redis: the unacked set lets it go.
    _full(real_redis)
    message.ack()
    assert real_redis.hlen("unacked") == 0
    assert real_redis.zcard("unacked_index") == 0


@pytest.mark.parametrize("how", ["reject", "shutdown"])
def test_a_task_given_back_in_a_full_redis_stays_unacked(
    connection: Connection, real_redis: Any, how: str
) -> None:
    message = _take(connection, {"n": 2})
    tag = message.delivery_tag.encode()
    _full(real_redis)
    with structlog.testing.capture_logs() as logs:
        if how == "reject":
            message.reject(requeue=True)
        else:
            connection.release()  # a worker stopping gives back what it has not acknowledged
    assert "broker_full_task_left_unacked" in [e["event"] for e in logs]
    # Where the sweep finds it, past the visibility timeout: not lost.
    assert real_redis.llen("t") == 0
    assert real_redis.hkeys("unacked") == [tag]
    assert real_redis.zrange("unacked_index", 0, -1) == [tag]

    _room(real_redis)
    with Connection(connection.as_uri(include_password=True)) as again:
        again.default_channel.qos.restore_by_tag(tag)
    assert real_redis.llen("t") == 1
    assert real_redis.hlen("unacked") == 0


def test_a_consumer_reconnecting_to_a_full_redis_declares_its_queues_and_sweeps_later(
    connection: Connection, real_redis: Any
) -> None:
    """What Celery does when it resets its remote-control consumer (after a reply Redis
    refused) or reconnects: declare the queues again, and sweep the unacked set."""
    QUEUE(connection.default_channel).declare()
    _full(real_redis)
    with Connection(connection.as_uri(include_password=True)) as again:
        channel = again.default_channel
        QUEUE(channel).declare()  # its binding is there: nothing to write
        with structlog.testing.capture_logs() as logs:
            channel.qos.restore_visible()
        assert [e["event"] for e in logs] == ["broker_full_sweep_skipped"]
        # A queue never bound cannot be declared in a full Redis.
        with pytest.raises(OutOfMemoryError):
            Queue("new", Exchange("new", type="direct"), routing_key="new")(channel).declare()
