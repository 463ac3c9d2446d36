"""py-consul with ACL tokens (token=), against a consulate agent with ACLs on.

Usage: consul_acl.py AGENT_HOST:PORT SECRET
SECRET may write keys under app/ only. Exits non-zero on the first broken expectation.
"""

import sys

import consul


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    secret = sys.argv[2]
    c = consul.Consul(host=host, port=int(port), token=secret)
    assert c.kv.put("app/py", "from-py") is True
    _, entry = c.kv.get("app/py")
    assert entry["Value"] == b"from-py", entry
    try:
        c.kv.put("other/py", "x")
        raise AssertionError("writing other/py must be refused")
    except consul.ACLPermissionDenied:
        pass
    anonymous = consul.Consul(host=host, port=int(port))
    try:
        anonymous.kv.get("app/py")
        raise AssertionError("an anonymous read must be refused")
    except consul.ACLPermissionDenied:
        pass
    assert c.acl.token.read_self()["SecretID"] == secret
    print("py-consul with ACL tokens: ok")


if __name__ == "__main__":
    main()
