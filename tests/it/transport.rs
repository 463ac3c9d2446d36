//! The QUIC transport with real certificates, in process: the handshake/authorization
//! matrix, hostile input on the port, and bad frames.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::{BufMut, Bytes, BytesMut};
use consulate::pki::Validity;
use consulate::rpc::{AgentResponse, Pong};
use consulate::transport::identity::{Alpn, Refusal};
use consulate::transport::rpc::RemoteError;
use consulate::transport::{TransportError, TransportOptions};
use consulate::vocab::Role;

fn assert_pong(r: Result<AgentResponse, TransportError>) {
    match r {
        Ok(AgentResponse::Ping(Ok(Pong { payload, .. }))) => assert_eq!(&payload[..], b"hello"),
        Ok(other) => panic!("expected a pong, got {other:?}"),
        Err(e) => panic!("expected a pong, got {e}"),
    }
}

fn assert_refused(r: Result<AgentResponse, TransportError>, want: Refusal) {
    match r {
        Err(TransportError::Refused { refusal, .. }) => assert_eq!(refusal, want),
        Err(e) => panic!("expected refusal {want}, got error {e}"),
        Ok(_) => panic!("expected refusal {want}, got a pong"),
    }
}

#[tokio::test]
async fn handshake_matrix() {
    let pki = TestPki::new();
    let server = TestNode::start(
        &pki.material(Role::Server, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    let good = TestNode::start(
        &pki.material(Role::Server, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    let good_still_served = || async {
        assert_pong(ping(&good.client(Alpn::Rpc), server.addr()).await);
    };

    // Right certificates are accepted on every ALPN.
    for alpn in Alpn::ALL {
        assert_pong(ping(&good.client(alpn), server.addr()).await);
    }

    // A certificate from another CA.
    let other_ca = TestPki::new();
    let stranger = TestNode::start(
        &other_ca.material(Role::Server, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    let err = ping(&stranger.client(Alpn::Rpc), server.addr()).await;
    assert_refused(err, Refusal::Handshake);
    good_still_served().await;

    // An expired certificate from the right CA.
    let now = time::OffsetDateTime::now_utc();
    let expired = pki.pair(
        Role::Server,
        "dc1",
        Validity {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        },
    );
    let old = TestNode::start(
        &pki.material_with(&expired),
        "dc1",
        TransportOptions::default(),
    );
    assert_refused(
        ping(&old.client(Alpn::Rpc), server.addr()).await,
        Refusal::Handshake,
    );
    eventually(Duration::from_secs(5), "expired cert counted", || async {
        (server.refused("tls_handshake") >= 2).then_some(())
    })
    .await;
    good_still_served().await;

    // A client certificate: fine on rpc, refused on the servers-only ALPNs.
    let client = TestNode::start(
        &pki.material(Role::Client, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    assert_pong(ping(&client.client(Alpn::Rpc), server.addr()).await);
    assert_refused(
        ping(&client.client(Alpn::Raft), server.addr()).await,
        Refusal::ClientNotAllowed,
    );
    assert_refused(
        ping(&client.client(Alpn::WanGossip), server.addr()).await,
        Refusal::ClientNotAllowed,
    );
    good_still_served().await;

    // A client of another DC may not use our rpc.
    let client2 = TestNode::start(
        &pki.material(Role::Client, "dc2"),
        "dc2",
        TransportOptions::default(),
    );
    assert_refused(
        ping(&client2.client(Alpn::Rpc), server.addr()).await,
        Refusal::WrongDatacenter,
    );

    // A dc2 server: refused on dc1's raft, accepted on wan-gossip and rpc.
    let dc2 = TestNode::start(
        &pki.material(Role::Server, "dc2"),
        "dc2",
        TransportOptions::default(),
    );
    assert_refused(
        ping(&dc2.client(Alpn::Raft), server.addr()).await,
        Refusal::WrongDatacenter,
    );
    assert_pong(ping(&dc2.client(Alpn::WanGossip), server.addr()).await);
    assert_pong(ping(&dc2.client(Alpn::Rpc), server.addr()).await);

    // Both sides check: a server dialing a client's endpoint refuses it as a server.
    assert_refused(
        ping(&good.client(Alpn::Rpc), client.addr()).await,
        Refusal::ClientNotAllowed,
    );
    // ...and a dc1 server refuses a dc2 server on raft from the dialing side too.
    assert_refused(
        ping(&good.client(Alpn::Raft), dc2.addr()).await,
        Refusal::WrongDatacenter,
    );

    assert_eq!(server.refused("client_not_allowed"), 2);
    assert_eq!(server.refused("wrong_datacenter"), 2);
    good_still_served().await;
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let pki = TestPki::new();
    let server = TestNode::start(
        &pki.material(Role::Server, "dc1"),
        "dc1",
        TransportOptions::default(),
    );

    // A raw quinn client that presents no certificate but trusts our CA.
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"rpc".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let outcome = async {
        let conn = ep
            .connect(server.addr(), "server.dc1.consul")
            .unwrap()
            .await
            .map_err(|e| e.to_string())?;
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        s.write_all(b"\0\0\0\x01x")
            .await
            .map_err(|e| e.to_string())?;
        let _ = s.finish();
        r.read_to_end(1024).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let res = tokio::time::timeout(Duration::from_secs(5), outcome)
        .await
        .expect("bounded");
    assert!(
        res.is_err(),
        "a peer without a client certificate must not be served"
    );
    eventually(Duration::from_secs(5), "refusal counted", || async {
        (server.refused("tls_handshake") >= 1).then_some(())
    })
    .await;
    let good = TestNode::start(
        &pki.material(Role::Server, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    assert_pong(ping(&good.client(Alpn::Rpc), server.addr()).await);
}

/// A UDP relay that forwards a client's packets to the server and drops every answer: each
/// connection attempt through it is a handshake that never completes.
async fn blackhole_relay(server: std::net::SocketAddr) -> std::net::SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let out = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut sink = vec![0u8; 2048];
        loop {
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, _)) = r else { return };
                    let _ = out.send_to(&buf[..n], server).await;
                }
                _ = out.recv_from(&mut sink) => {} // answers are dropped
            }
        }
    });
    addr
}

#[tokio::test]
async fn garbage_and_half_open_flood_do_not_stop_service() {
    let pki = TestPki::new();
    let opts = TransportOptions {
        handshake_timeout: Duration::from_secs(3),
        ..TransportOptions::default()
    };
    let server = TestNode::start(&pki.material(Role::Server, "dc1"), "dc1", opts.clone());
    let good = TestNode::start(
        &pki.material(Role::Server, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    let target = server.addr();

    // Garbage datagrams of every size, including ones that look like long-header packets.
    let junk = tokio::spawn(async move {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..20_000u32 {
            let len = (i as usize * 7919) % 1500 + 1;
            let mut pkt: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 17) as u8).collect();
            if i % 3 == 0 {
                pkt[0] = 0xc0 | (pkt[0] & 0x0f); // long header, Initial-ish
                if len > 5 {
                    pkt[1..5].copy_from_slice(&1u32.to_be_bytes()); // QUIC v1
                }
            }
            let _ = sock.send_to(&pkt, target).await;
            if i % 500 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });

    // Half-open handshakes: 1,000 connection attempts whose answers never come back, made
    // from another thread (as another machine would) so the attacker's own CPU use does not
    // count against the server.
    let relay = blackhole_relay(target).await;
    let attacker_tls = pki.material(Role::Server, "dc1");
    let flood = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let attacker = TestNode::start(&attacker_tls, "dc1", opts);
            let attempts = (0..1000).map(|i| {
                let t = attacker.transport.clone();
                // A distinct pool key per attempt makes each one its own handshake.
                async move {
                    t.connect(relay, Alpn::Rpc, Some(&format!("x{i}")))
                        .await
                        .is_ok()
                }
            });
            let completed = futures::future::join_all(attempts).await;
            assert!(
                completed.iter().all(|ok| !ok),
                "no half-open handshake may complete"
            );
        });
    });

    // Meanwhile a good peer keeps being served, each call well within its deadline.
    for i in 0..30 {
        let t = std::time::Instant::now();
        let r = ping(&good.client(Alpn::Rpc), target).await;
        eprintln!("call {i}: {:?} {:?}", t.elapsed(), r.as_ref().err());
        assert_pong(r);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new peer can still connect (possibly through a Retry) during the flood.
    let late = TestNode::start(
        &pki.material(Role::Client, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    assert_pong(ping(&late.client(Alpn::Rpc), target).await);
    junk.await.unwrap();
    flood.join().unwrap();
    // The flood did reach the server: its half-open handshakes were dropped at the deadline.
    eventually(
        Duration::from_secs(10),
        "abandoned handshakes counted",
        || async { (server.refused("handshake_timeout") > 0).then_some(()) },
    )
    .await;
    assert_pong(ping(&good.client(Alpn::Rpc), target).await);
}

async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Option<Vec<u8>> {
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.finish();
    tokio::time::timeout(Duration::from_secs(5), r.read_to_end(1 << 20))
        .await
        .expect("the server answers or closes the stream in time")
        .ok()
}

fn decode_reply(reply: &[u8]) -> Result<AgentResponse, RemoteError> {
    assert!(reply.len() >= 4, "a reply is a length-prefixed frame");
    let len = u32::from_be_bytes(reply[..4].try_into().unwrap()) as usize;
    assert_eq!(len, reply.len() - 4);
    rmp_serde::from_slice(&reply[4..]).unwrap()
}

#[tokio::test]
async fn malformed_and_oversized_frames_get_errors_not_panics() {
    let pki = TestPki::new();
    let opts = TransportOptions {
        max_frame: 64 * 1024,
        ..TransportOptions::default()
    };
    let server = TestNode::start(&pki.material(Role::Server, "dc1"), "dc1", opts.clone());
    let peer = TestNode::start(&pki.material(Role::Server, "dc1"), "dc1", opts.clone());
    let conn = peer
        .transport
        .connect(server.addr(), Alpn::Rpc, None)
        .await
        .unwrap();

    // Well-framed garbage.
    let mut frame = BytesMut::new();
    frame.put_u32(5);
    frame.put_slice(b"\xc1\xc1\xc1\xc1\xc1");
    let reply = raw_exchange(&conn, &frame).await.expect("an error reply");
    assert!(matches!(
        decode_reply(&reply),
        Err(RemoteError::Malformed(_))
    ));

    // A valid MessagePack value of the wrong shape.
    let body = rmp_serde::to_vec_named(&vec![1, 2, 3]).unwrap();
    let mut frame = BytesMut::new();
    frame.put_u32(body.len() as u32);
    frame.put_slice(&body);
    let reply = raw_exchange(&conn, &frame).await.expect("an error reply");
    assert!(matches!(
        decode_reply(&reply),
        Err(RemoteError::Malformed(_))
    ));

    // A length prefix over the limit: refused without reading the body.
    let mut frame = BytesMut::new();
    frame.put_u32(u32::MAX);
    frame.put_slice(&[0u8; 1000]);
    let reply = raw_exchange(&conn, &frame).await.expect("an error reply");
    assert_eq!(
        decode_reply(&reply),
        Err(RemoteError::TooLarge { limit: 64 * 1024 })
    );

    // A truncated frame: the stream ends before the body; the server just closes it.
    let mut frame = BytesMut::new();
    frame.put_u32(100);
    frame.put_slice(b"short");
    let reply = raw_exchange(&conn, &frame).await;
    assert!(reply.is_none_or(|r| r.is_empty()));

    // Our own client refuses to send an oversized request.
    let big = consulate::rpc::AgentRequest::from(consulate::rpc::Ping {
        payload: Bytes::from(vec![0u8; 100 * 1024]),
    });
    let err = peer
        .client(Alpn::Rpc)
        .call(server.addr(), None, &big, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Codec { .. }), "{err}");

    let rejected = |r: &str| {
        server
            .metrics
            .transport
            .frames_rejected
            .with_label_values(&[r])
            .get()
    };
    assert_eq!(rejected("malformed"), 2);
    assert_eq!(rejected("oversized"), 1);
    // The same connection still serves good requests.
    assert_pong(ping(&peer.client(Alpn::Rpc), server.addr()).await);
}

#[tokio::test]
async fn errors_say_whether_a_retry_is_safe() {
    let pki = TestPki::new();
    let node = TestNode::start(
        &pki.material(Role::Server, "dc1"),
        "dc1",
        TransportOptions {
            handshake_timeout: Duration::from_millis(300),
            ..TransportOptions::default()
        },
    );
    // Nobody listens here: unreachable, safe to retry elsewhere.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = sock.local_addr().unwrap();
    drop(sock);
    let err = ping(&node.client(Alpn::Rpc), dead).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    assert!(err.is_retry_safe());

    // Refused: safe. Remote malformed: not.
    let client = TestNode::start(
        &pki.material(Role::Client, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    let err = ping(&client.client(Alpn::Raft), node.addr())
        .await
        .unwrap_err();
    assert!(err.is_retry_safe());

    // A connection that was closed is re-dialed transparently.
    let good = TestNode::start(
        &pki.material(Role::Server, "dc1"),
        "dc1",
        TransportOptions::default(),
    );
    assert_pong(ping(&good.client(Alpn::Rpc), node.addr()).await);
    let conn = good
        .transport
        .connect(node.addr(), Alpn::Rpc, None)
        .await
        .unwrap();
    conn.close(0u32.into(), b"test");
    assert_pong(ping(&good.client(Alpn::Rpc), node.addr()).await);
}
