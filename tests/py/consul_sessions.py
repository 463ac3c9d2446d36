"""Sessions and locks through the real py-consul client (run by tests/sessions.rs).

usage: consul_sessions.py HOST:PORT
Two sessions contend for one key with kv.put(acquire=/release=); TTL, renew, info, node,
list and destroy as py-consul calls them. Exits non-zero with the failing step on error.
"""
import sys

import consul

host, port = sys.argv[1].rsplit(":", 1)
c = consul.Consul(host=host, port=int(port))

a = c.session.create(name="py-a", ttl=10, lock_delay=0)
b = c.session.create(name="py-b", behavior="delete")
assert a and b and a != b, (a, b)

assert c.kv.put("py/lock", "held-by-a", acquire=a) is True, "a acquires"
assert c.kv.put("py/lock", "b-wants-it", acquire=b) is False, "b is refused while a holds it"
_, entry = c.kv.get("py/lock")
assert entry["Session"] == a and entry["LockIndex"] == 1, entry
assert entry["Value"] == b"held-by-a", entry

renewed = c.session.renew(a)
assert renewed["ID"] == a and renewed["TTL"] == "10s", renewed
_, info = c.session.info(a)
assert info["Name"] == "py-a" and info["Behavior"] == "release", info
assert info["NodeChecks"] == ["serfHealth"], info
_, mine = c.session.node(info["Node"])
assert {s["ID"] for s in mine} >= {a, b}, mine
_, everything = c.session.list()
assert {s["ID"] for s in everything} >= {a, b}, everything

assert c.kv.put("py/lock", "released", release=a) is True, "a releases"
assert c.kv.put("py/lock", "held-by-b", acquire=b) is True, "b acquires"
_, entry = c.kv.get("py/lock")
assert entry["Session"] == b and entry["LockIndex"] == 2, entry

# Destroying b (behavior delete) deletes the key it holds.
assert c.session.destroy(b) is True
_, entry = c.kv.get("py/lock")
assert entry is None, entry
_, info = c.session.info(b)
assert info is None, info
c.session.destroy(a)
print("ok")
