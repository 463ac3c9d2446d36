"""Drives a consulate agent with the real py-consul client (PyPI), as users' tools do.

Usage: consul_compat.py AGENT_HOST:PORT LEADER_HOST:PORT
The agent is the one py-consul talks to; the leader's /metrics tells when a blocking query
is waiting. Every step polls with a deadline (anti-entropy and replication are async).
Exits non-zero with a message on the first broken expectation.
"""

import sys
import threading
import time
import urllib.request

import consul

DEADLINE = 15.0


def until(what, fn):
    end = time.monotonic() + DEADLINE
    last = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    leader = sys.argv[2]
    c = consul.Consul(host=host, port=int(port))

    # Agent: a service with a TTL check, then the check passes.
    assert c.agent.service.register(
        "web", service_id="web-1", port=8080, tags=["py", "v1"], meta={"Owner": "py"},
        check=consul.Check.ttl("30s"),
    )
    assert "web-1" in c.agent.services()
    assert c.agent.checks()["service:web-1"]["Status"] == "critical"

    # Catalog: the service appears once anti-entropy synced it.
    index, services = until("web in catalog.services()",
                            lambda: (lambda r: r if "web" in r[1] else None)(c.catalog.services()))
    assert sorted(services["web"]) == ["py", "v1"], services
    assert int(index) >= 1
    _, nodes = c.catalog.service("web")
    assert nodes[0]["ServicePort"] == 8080 and nodes[0]["ServiceMeta"] == {"Owner": "py"}, nodes

    # Health with the passing filter: critical first, passing after ttl_pass.
    _, passing = c.health.service("web", passing=True)
    assert passing == [], passing
    assert c.agent.check.ttl_pass("service:web-1", notes="all good")
    _, passing = until("a passing web instance",
                       lambda: (lambda r: r if r[1] else None)(c.health.service("web", passing=True)))
    assert passing[0]["Service"]["ID"] == "web-1", passing
    assert passing[0]["Checks"][-1]["Output"] == "all good", passing

    # KV: put, get, CAS, recurse, delete.
    assert c.kv.put("py/a", "1") is True
    _, data = c.kv.get("py/a")
    assert data["Value"] == b"1", data
    mi = data["ModifyIndex"]
    assert c.kv.put("py/a", "2", cas=mi) is True
    assert c.kv.put("py/a", "3", cas=mi) is False
    assert c.kv.put("py/b/c", "x", flags=7) is True
    _, items = c.kv.get("py/", recurse=True)
    assert [i["Key"] for i in items] == ["py/a", "py/b/c"], items
    assert items[1]["Flags"] == 7
    _, keys = c.kv.get("py/", keys=True, separator="/")
    assert keys == ["py/a", "py/b/"], keys
    assert c.kv.delete("py/", recurse=True) is True
    _, gone = c.kv.get("py/", recurse=True)
    assert gone is None, gone

    # A blocking get returns after a write made by another thread while it waits.
    index, none = c.kv.get("py/block")
    assert none is None

    def write_when_blocked():
        def blocked():
            text = urllib.request.urlopen(f"http://{leader}/metrics", timeout=5).read().decode()
            return "consulate_rpc_queries_blocking 1" in text.splitlines()
        until("the blocking query to wait on the leader", blocked)
        consul.Consul(host=host, port=int(port)).kv.put("py/block", "v")

    writer = threading.Thread(target=write_when_blocked)
    writer.start()
    started = time.monotonic()
    new_index, data = c.kv.get("py/block", index=index, wait="20s")
    took = time.monotonic() - started
    writer.join()
    assert data is not None and data["Value"] == b"v", data
    assert int(new_index) > int(index)
    assert took < 15, took

    # Maintenance mode (py-consul sends enable as True/False): the service, then the node.
    assert c.agent.service.maintenance("web-1", True, reason="py upgrade") is True
    maint = c.agent.checks()["_service_maintenance:web-1"]
    assert maint["Status"] == "critical" and maint["Notes"] == "py upgrade", maint
    until("web-1 out of the passing instances",
          lambda: c.health.service("web", passing=True)[1] == [])
    assert c.agent.service.maintenance("web-1", False) is True
    assert "_service_maintenance:web-1" not in c.agent.checks()
    assert c.agent.maintenance(True, reason="py rack move") is True
    assert c.agent.checks()["_node_maintenance"]["Notes"] == "py rack move"
    assert c.agent.maintenance(False) is True
    assert "_node_maintenance" not in c.agent.checks()

    # User events: fired, then listed (Payload decoded by py-consul), and a blocking list.
    fired = c.event.fire("py-deploy", body="v7")
    assert fired["Name"] == "py-deploy" and fired["ID"], fired
    index, events = until("the event listed",
                          lambda: (lambda r: r if r[1] else None)(c.event.list(name="py-deploy")))
    assert events[-1]["ID"] == fired["ID"] and events[-1]["Payload"] == b"v7", events

    # Whether the list is already waiting when the event comes or not, it answers the new
    # index with the new event.
    def fire_later():
        consul.Consul(host=host, port=int(port)).event.fire("py-deploy", body="v8")

    firer = threading.Thread(target=fire_later)
    firer.start()
    new_index, events = c.event.list(name="py-deploy", index=index, wait="20s")
    firer.join()
    assert new_index != index and events[-1]["Payload"] == b"v8", (new_index, events)

    c.agent.service.deregister("web-1")
    until("web gone from the catalog", lambda: "web" not in c.catalog.services()[1])
    print("py-consul compatibility: ok")


if __name__ == "__main__":
    main()
