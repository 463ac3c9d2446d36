//! TLS for the QUIC endpoint: loading the federation CA and the agent's own certificate,
//! building the rustls (ring provider, TLS 1.3 only) server and per-ALPN client configs,
//! and reading a peer's identity out of its verified certificate.
//!
//! Chain verification happens inside the handshake (both directions: mutual TLS). Which
//! identity may speak which protocol is decided after the handshake by
//! [`super::identity::authorize`], because the ALPN is only known then.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::identity::{Alpn, Identity, identity_from_sans};

/// Problems with the TLS files or their contents. Operator errors: never retryable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file (CA, certificate, key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The agent's own certificate does not name the identity its config claims.
    #[error("certificate {path} is for {found}, but this agent is configured as {expected}")]
    IdentityMismatch {
        /// The certificate file.
        path: PathBuf,
        /// What the config says (e.g. `server.dc1`).
        expected: String,
        /// What the certificate says.
        found: String,
    },
    /// rustls refused the configuration (e.g. key does not match certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The paths of the three PEM files an agent needs.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The federation CA certificate(s).
    pub ca_file: PathBuf,
    /// This agent's certificate (chain).
    pub cert_file: PathBuf,
    /// This agent's private key.
    pub key_file: PathBuf,
}

/// Loaded key material, shared by the server and client sides of one endpoint.
#[derive(Debug)]
pub struct TlsMaterial {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    domain: String,
}

fn file_err(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_err(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(what, path, e))?;
    if certs.is_empty() {
        return Err(file_err(what, path, "no PEM certificate found"));
    }
    Ok(certs)
}

impl TlsMaterial {
    /// Loads the CA, certificate and key from PEM files.
    pub fn load(files: &TlsFiles, domain: &str) -> Result<TlsMaterial, TlsError> {
        let ca = read_certs("CA file", &files.ca_file)?;
        let chain = read_certs("certificate file", &files.cert_file)?;
        let key_pem =
            std::fs::read(&files.key_file).map_err(|e| file_err("key file", &files.key_file, e))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| file_err("key file", &files.key_file, e))?;
        Ok(TlsMaterial {
            ca,
            chain,
            key,
            domain: domain.to_string(),
        })
    }

    /// Builds material from PEM strings (tests and benchmarks that keep certs in memory).
    pub fn from_pem(
        ca: &str,
        cert: &str,
        key: &str,
        domain: &str,
    ) -> Result<TlsMaterial, TlsError> {
        let p = Path::new("<memory>");
        let parse = |what, s: &str| {
            CertificateDer::pem_slice_iter(s.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(what, p, e))
        };
        Ok(TlsMaterial {
            ca: parse("CA", ca)?,
            chain: parse("certificate", cert)?,
            key: PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| file_err("key", p, e))?,
            domain: domain.to_string(),
        })
    }

    /// A secret derived from this agent's private key, stable across restarts. The QUIC
    /// endpoint keys its stateless resets with it, so that after a crash and restart peers
    /// holding connections to the old process are reset at once instead of waiting for an
    /// idle timeout.
    pub fn reset_secret(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"consulate stateless reset v1");
        ctx.update(self.key.secret_der());
        ctx.finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }

    /// The DNS domain identities are parsed under.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// This agent's own identity, as its certificate states it.
    pub fn own_identity(&self) -> Option<Identity> {
        self.chain
            .first()
            .and_then(|c| identity_of(c, &self.domain))
    }

    /// Checks that the certificate names the identity the config claims, so that a server
    /// started with a client certificate (or another DC's) fails at start-up, not at the
    /// first handshake.
    pub fn check_identity(&self, expected: &Identity, cert_file: &Path) -> Result<(), TlsError> {
        match self.own_identity() {
            Some(found) if &found == expected => Ok(()),
            found => Err(TlsError::IdentityMismatch {
                path: cert_file.to_path_buf(),
                expected: expected.to_string(),
                found: found
                    .map_or_else(|| "no server./client. identity".into(), |f| f.to_string()),
            }),
        }
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone())?;
        }
        Ok(Arc::new(roots))
    }

    /// The acceptor's config: client certificates required and verified against the CA,
    /// every ALPN offered.
    pub fn server_config(&self) -> Result<QuicServerConfig, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = Alpn::ALL.iter().map(|a| a.id().to_vec()).collect();
        cfg.max_early_data_size = 0;
        Ok(QuicServerConfig::try_from(cfg).map_err(|e| rustls::Error::General(e.to_string()))?)
    }

    /// The HTTPS API's config (Consul's `ports.https`): this agent's certificate, TLS 1.2
    /// or 1.3 for the tools that still speak 1.2, and with `verify_incoming` a client
    /// certificate signed by the federation CA required.
    pub fn https_config(&self, verify_incoming: bool) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if verify_incoming {
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(self.roots()?, provider).build()?,
            )
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder.with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// The dialer's config for one ALPN: our certificate presented, the server's chain
    /// verified against the CA (its identity is checked by policy after the handshake).
    pub fn client_config(&self, alpn: Alpn) -> Result<QuicClientConfig, TlsError> {
        let provider = provider();
        let verifier = Arc::new(CaServerVerifier {
            roots: Some(self.roots()?),
            provider: provider.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![alpn.id().to_vec()];
        Ok(QuicClientConfig::try_from(cfg).map_err(|e| rustls::Error::General(e.to_string()))?)
    }
}

/// The one crypto provider of the project: ring, passed explicitly (no process default).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the identity SAN out of a DER certificate.
pub fn identity_of(cert: &CertificateDer<'_>, domain: &str) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let names = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    identity_from_sans(names, domain)
}

/// The identity of the peer of an established QUIC connection.
pub fn peer_identity(conn: &quinn::Connection, domain: &str) -> Option<Identity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.first().and_then(|c| identity_of(c, domain))
}

/// Verifies the server's chain against the federation CA and validity period, but not a
/// host name: agents are addressed by IP, and the name rule (which identity may serve which
/// protocol) is [`super::identity::authorize`]'s, applied after the handshake. Without
/// roots (an HTTP check's `TLSSkipVerify`) any chain is accepted; handshake signatures are
/// checked either way, so the connection is real TLS.
#[derive(Debug)]
struct CaServerVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CaServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client config for an agent's HTTPS API (the CLI with `CONSUL_CACERT`): the
/// server's chain verified against the PEM certificates of `ca_file` (its name as usual),
/// and a client certificate (`CONSUL_CLIENT_CERT`/`CONSUL_CLIENT_KEY`) presented if given.
pub fn api_client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in read_certs("CA file", path)? {
                roots.add(c)?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let builder = builder.with_root_certificates(roots);
    Ok(match client {
        Some((cert, key)) => {
            let chain = read_certs("client certificate file", cert)?;
            let pem = std::fs::read(key).map_err(|e| file_err("client key file", key, e))?;
            let key = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| file_err("client key file", key, e))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// A rustls client config for HTTPS to the web (HTTP checks, the CLI): the ring provider,
/// the system's root certificates, and with `verify == false` (a check's `TLSSkipVerify`)
/// any server certificate accepted. Loading the system roots reads a few hundred files:
/// build it once per client.
pub fn web_client_config(verify: bool) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    if !verify {
        return builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CaServerVerifier {
                roots: None,
                provider,
            }))
            .with_no_client_auth();
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system root certificate could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    builder.with_root_certificates(roots).with_no_client_auth()
}
