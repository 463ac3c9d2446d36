"""py-consul's prepared-query API (create, get, list, explain, execute, update, delete)
against a consulate client agent, and its coordinate API.

Usage: consul_query.py AGENT_HOST:PORT
The DC holds service `web` with a passing instance on node `web-1` and a critical one on
`web-2`. Exits non-zero on the first broken expectation.
"""

import sys

import consul


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    c = consul.Consul(host=host, port=int(port))
    created = c.query.create("web", name="py-web", ttl="5s", tags=["!canary"])
    qid = created["ID"]
    [q] = c.query.get(qid)
    assert q["Name"] == "py-web" and q["Service"]["Service"] == "web", q
    assert q["DNS"]["TTL"] == "5s", q
    assert any(x["ID"] == qid for x in c.query.list())
    assert c.query.explain("py-web")["Query"]["Service"]["Service"] == "web"
    # Critical instances never answer.
    for name_or_id in ("py-web", qid):
        result = c.query.execute(name_or_id)
        nodes = [n["Node"]["Node"] for n in result["Nodes"]]
        assert nodes == ["web-1"], result
        assert result["Failovers"] == 0 and result["Datacenter"] == "dc1", result
    assert len(c.query.execute("py-web", limit=1)["Nodes"]) == 1
    assert c.query.update(qid, "web", name="py-web", onlypassing=True) is True
    assert c.query.get(qid)[0]["Service"]["OnlyPassing"] is True
    assert c.query.delete(qid) is True
    assert c.query.get(qid) is None, "a deleted query is gone (404)"
    # Coordinates: the DC's nodes, and the WAN view by datacenter.
    _, nodes = c.coordinate.nodes()
    assert isinstance(nodes, list), nodes
    dcs = c.coordinate.datacenters()
    assert [d["Datacenter"] for d in dcs] == ["dc1"], dcs
    print("py-consul prepared queries: ok")


if __name__ == "__main__":
    main()
