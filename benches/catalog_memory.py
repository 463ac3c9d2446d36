"""Helper of benches/catalog_memory.sh (stdlib only).

register HOST:PORT NODES PER_NODE  - registers NODES*PER_NODE service instances via
                                     /v1/catalog/register, 32 at a time
block HOST:PORT N PATH SECONDS     - holds N blocking queries on PATH (at its current index)
                                     open for SECONDS, then checks none has returned
"""

import asyncio
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def register(addr, nodes, per_node):
    def one(i):
        n, s = divmod(i, per_node)
        body = {
            "Node": f"node-{n}", "Address": f"10.{n // 250}.{n % 250}.1",
            "NodeMeta": {"rack": f"r{n % 8}"},
            "Service": {"ID": f"svc-{s}-{n}", "Service": f"svc-{s}", "Port": 8000 + s,
                        "Tags": ["v1", f"shard-{n % 4}"], "Meta": {"version": "1.0.0"}},
            "Check": {"CheckID": f"check-{s}", "Name": "alive", "Status": "passing",
                      "ServiceID": f"svc-{s}-{n}"},
        }
        req = urllib.request.Request(f"http://{addr}/v1/catalog/register",
                                     data=json.dumps(body).encode(), method="PUT")
        assert urllib.request.urlopen(req, timeout=30).read() == b"true"

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(nodes * per_node)))


async def block(addr, n, path, seconds):
    host, port = addr.rsplit(":", 1)
    with urllib.request.urlopen(f"http://{addr}{path}") as r:
        index = r.headers["X-Consul-Index"]
    sep = "&" if "?" in path else "?"
    request = (f"GET {path}{sep}index={index}&wait=10m HTTP/1.1\r\n"
               f"Host: {addr}\r\n\r\n").encode()
    conns = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        conns.append((reader, writer))
    await asyncio.gather(*(w.drain() for _, w in conns))
    print(f"{n} blocking queries open", flush=True)
    await asyncio.sleep(seconds)
    early = [r for r, _ in conns if r.at_eof() or len(r._buffer) > 0]
    if early:
        sample = bytes(early[0]._buffer[:400]).decode(errors="replace")
        raise SystemExit(f"{len(early)} blocking queries returned early, e.g.: {sample!r}")
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    cmd, addr = sys.argv[1], sys.argv[2]
    if cmd == "register":
        register(addr, int(sys.argv[3]), int(sys.argv[4]))
    else:
        asyncio.run(block(addr, int(sys.argv[3]), sys.argv[4], float(sys.argv[5])))
