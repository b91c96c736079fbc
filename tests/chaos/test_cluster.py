"""The cluster scenarios of issue 21 (``make chaos CHAOS_ARGS="-k cluster"``): the shop
on a three-node RabbitMQ cluster of the tests' own (``tests/fixtures/rabbit_cluster.py``),
200 orders through the real API, relay and two workers, one fault to the cluster, and
the same promises counted as in every other scenario. The first test is the fast one
``make test`` keeps (a leader kill, 40 orders).

The processes are spread over the nodes as a load balancer would spread them: the API,
relay and beat list ``c1`` first, the first worker ``c2``, the second ``c3``; each URL
lists all three, so each process fails over to the others.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.chaos.rig import ORDERS, Placement, Rig
from tests.fixtures.pg_standby import PgPair
from tests.fixtures.ports import free_port
from tests.fixtures.proxy import Forwarder
from tests.fixtures.rabbit_cluster import Node, RabbitCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

Chaos = Callable[..., Rig]
WORKFLOW_QUEUES = ("orders", "payments", "notifications")
SMOKE_ORDERS = 40
PROMOTE_AFTER = 3.0  # seconds between the primary's death and the standby's promotion


def spread(cluster: RabbitCluster, vhost: str) -> list[str | None]:
    """The two workers' broker URLs: the first lists c2 first, the second c3."""
    return [cluster.url_for(vhost, first=cluster.nodes[1]),
            cluster.url_for(vhost, first=cluster.nodes[2])]


def workflow_leader(cluster: RabbitCluster, vhost: str) -> Node:
    """The node that leads most of the workflow queues (all of them, usually)."""
    leaders = Counter(cluster.leader_of(queue, vhost).name for queue in WORKFLOW_QUEUES)
    return cluster.node(leaders.most_common(1)[0][0])


def leaders_note(cluster: RabbitCluster, vhost: str) -> str:
    leaders = {q: cluster.node(cluster.leader_of(q, vhost).name).short
               for q in WORKFLOW_QUEUES}
    return "leaders " + ", ".join(f"{q}@{n}" for q, n in leaders.items())


def checkout_latency(placing: Placement) -> str:
    """The checkout's p50 and p99 (first try to 202, storefront retries included)."""
    latencies = sorted(placing.latencies)
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    return f"checkout p50 {p50:.2f} s, p99 {p99:.2f} s"


def kill_the_leader(rig: Rig, cluster: RabbitCluster, vhost: str) -> Node:
    leader = workflow_leader(cluster, vhost)
    cluster.kill(leader)
    rig.result.faults += 1
    rig.result.notes.append(f"kill -9 of {leader.short}, which led the workflow queues")
    return leader


@pytest.mark.chaos_smoke
def test_smoke_cluster_leader_killed_loses_nothing(cluster_chaos: Chaos,
                                                   rabbit_cluster: RabbitCluster,
                                                   cluster_vhost: str) -> None:
    rig = cluster_chaos("smoke: cluster, leader node kill -9",
                        worker_urls=spread(rabbit_cluster, cluster_vhost))
    rig.stock_for(SMOKE_ORDERS)
    placing = rig.place(SMOKE_ORDERS, rate=10)
    time.sleep(2)
    kill_the_leader(rig, rabbit_cluster, cluster_vhost)
    placing.join()
    rig.finish()
    rig.result.notes.append(f"after: {leaders_note(rabbit_cluster, cluster_vhost)}")


@pytest.mark.chaos
def test_cluster_leader_node_killed_mid_run(cluster_chaos: Chaos,
                                            rabbit_cluster: RabbitCluster,
                                            cluster_vhost: str) -> None:
    rig = cluster_chaos("c1. cluster: kill -9 of the workflow queues' leader",
                        worker_urls=spread(rabbit_cluster, cluster_vhost))
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(12)
    kill_the_leader(rig, rabbit_cluster, cluster_vhost)
    placing.join()
    rig.result.notes.append(checkout_latency(placing))
    rig.finish()
    rig.result.notes.append(f"after: {leaders_note(rabbit_cluster, cluster_vhost)}")


@pytest.mark.chaos
def test_cluster_node_paused_thirty_seconds(cluster_chaos: Chaos,
                                            rabbit_cluster: RabbitCluster,
                                            cluster_vhost: str) -> None:
    rig = cluster_chaos("c2. cluster: SIGSTOP of the leader 30 s, then SIGCONT",
                        worker_urls=spread(rabbit_cluster, cluster_vhost))
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(10)
    node = workflow_leader(rabbit_cluster, cluster_vhost)
    rabbit_cluster.pause(node)
    try:
        time.sleep(30)
    finally:
        rabbit_cluster.resume(node)
    rig.result.faults = 1
    placing.join()
    rig.result.notes.append(f"{node.short} (the workflow queues' leader) stopped 30 s; "
                            f"{checkout_latency(placing)}")
    rig.finish()
    rig.result.notes.append(f"after: {leaders_note(rabbit_cluster, cluster_vhost)}")


@pytest.mark.chaos
def test_cluster_rolling_restart_of_every_node(cluster_chaos: Chaos,
                                               rabbit_cluster: RabbitCluster,
                                               cluster_vhost: str) -> None:
    rig = cluster_chaos("c3. cluster: rolling restart of the three nodes",
                        worker_urls=spread(rabbit_cluster, cluster_vhost))
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(5)
    for node in rabbit_cluster.nodes:
        # as an operator would: only stop a node whose queues keep a majority without it
        rabbit_cluster.await_not_quorum_critical(node)
        started = time.monotonic()
        rabbit_cluster.stop_node(node)
        rabbit_cluster.restart_node(node)
        rig.result.faults += 1
        rig.result.notes.append(f"{node.short} back in {time.monotonic() - started:.0f} s")
    placing.join()
    rig.finish()


@pytest.mark.chaos
def test_cluster_one_workers_link_to_its_node_cut(cluster_chaos: Chaos,
                                                  rabbit_cluster: RabbitCluster,
                                                  cluster_vhost: str) -> None:
    c1, c2, c3 = rabbit_cluster.nodes
    link = Forwarder(free_port(), ("127.0.0.1", c2.port))
    link.start()
    try:
        # the first worker reaches c2 through the link, then c3 and c1 directly
        via_link = ";".join([f"amqp://guest:guest@127.0.0.1:{link.port}/{cluster_vhost}",
                             c3.url(cluster_vhost), c1.url(cluster_vhost)])
        rig = cluster_chaos("c5. cluster: one worker's link to its node cut 30 s",
                            worker_urls=[via_link, rabbit_cluster.url_for(cluster_vhost,
                                                                          first=c3)])
        rig.stock_for(ORDERS)
        placing = rig.place(ORDERS)
        time.sleep(10)
        link.stall()  # packets dropped silently first, as a dead route does
        time.sleep(10)
        cut = link.drop()  # then the connections reset, and new ones refused
        link.stop()
        link.flow()
        time.sleep(20)
        link.start()
        rig.result.faults = 1
        rig.result.notes.append(f"w1's link to c2: 10 s stalled, then {cut} connections "
                                "reset and refused 20 s")
        placing.join()
        rig.finish()
    finally:
        link.stop()



@pytest.mark.chaos
def test_cluster_postgresql_primary_stopped_and_standby_promoted(
        pg_pair: PgPair, cluster_chaos: Chaos) -> None:
    rig = cluster_chaos("c4. cluster: PostgreSQL primary stopped, standby promoted",
                        database_url=pg_pair.url())
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(12)
    started = time.monotonic()
    pg_pair.stop_primary()  # the primary's machine is gone
    time.sleep(PROMOTE_AFTER)  # what a failover manager takes to decide
    pg_pair.promote()
    assert pg_pair.writable(pg_pair.standby)
    rig.result.faults = 1
    rig.result.notes.append(f"primary stopped (-m immediate), standby promoted "
                            f"{time.monotonic() - started:.1f} s later")
    placing.join()
    rig.settle()
    # what the scenario's orders fail for by design; the failover adds no reason
    reasons = rig.failure_reasons()
    assert set(reasons) <= {"out_of_stock", "card_declined"}, reasons
    rig.finish()


@pytest.mark.chaos
def test_cluster_majority_lost_for_twenty_seconds(cluster_chaos: Chaos,
                                                  rabbit_cluster: RabbitCluster,
                                                  cluster_vhost: str) -> None:
    """Two of three nodes killed: the last one pauses itself (``pause_minority``), so
    the whole broker refuses; checkout goes on, the outbox keeps every message."""
    rig = cluster_chaos("c6. cluster: majority lost 20 s (2 of 3 nodes killed)",
                        worker_urls=spread(rabbit_cluster, cluster_vhost))
    rig.stock_for(ORDERS)
    placing = rig.place(ORDERS)
    time.sleep(10)
    lost = rabbit_cluster.nodes[1:]
    for node in lost:
        rabbit_cluster.kill(node)
    time.sleep(20)
    for node in lost:
        node.start()
    for node in lost:
        rabbit_cluster.await_node(node)
    rabbit_cluster.await_members()
    rig.result.faults = 2
    placing.join()
    rig.result.notes.append(f"{', '.join(n.short for n in lost)} killed 20 s; "
                            f"{checkout_latency(placing)}")
    rig.finish()
