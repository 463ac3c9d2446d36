//! The development PKI: a federation CA and the server/client certificates signed by it,
//! following Consul's `consul tls` conventions (file names, SANs, lifetimes). Used by the
//! `consulate tls ...` commands, by `consulate up`, and by the tests, so every certificate
//! the project sees is made by this one piece of code.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::transport::identity::identity_san;
use crate::vocab::Role;

/// What can go wrong making or writing certificates. None of these is retryable without a
/// change by the operator (a flag, a path, a file).
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file we would write is already there and `--force` was not given.
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The CA certificate or key could not be used to sign.
    #[error("cannot use CA {path}: {reason}")]
    BadCa {
        /// The CA file that failed to load.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// rcgen refused the parameters (bad name, ...).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM. Never committed; written with mode 0600.
    pub key_pem: String,
}

/// A validity window. Tests use a window in the past to make expired certificates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a minute ago (clock skew) for `days` days.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// Consul's default lifetimes: CA 5 years, agent certificates 1 year.
pub const CA_DAYS: i64 = 5 * 365;
/// Default lifetime of an agent certificate.
pub const CERT_DAYS: i64 = 365;

/// What an agent certificate is for.
#[derive(Debug, Clone)]
pub struct AgentCertSpec<'a> {
    /// Server or client.
    pub role: Role,
    /// The datacenter it is issued for.
    pub datacenter: &'a str,
    /// The DNS domain (default `consul`).
    pub domain: &'a str,
    /// Adds `<node>.server.<dc>.<domain>` for servers and names the files after the node.
    pub node: Option<&'a str>,
}

impl AgentCertSpec<'_> {
    /// The DNS and IP SANs, Consul's set: identity SAN, node SAN (servers), localhost, 127.0.0.1.
    pub fn sans(&self) -> Vec<String> {
        let id = identity_san(self.role, self.datacenter, self.domain);
        let mut sans = vec![id.clone()];
        if let (Role::Server, Some(node)) = (self.role, self.node) {
            sans.push(format!("{node}.{id}"));
        }
        sans.push("localhost".into());
        sans.push("127.0.0.1".into());
        sans
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

/// Creates a new self-signed federation CA (ECDSA P-256).
pub fn create_ca(domain: &str, validity: Validity) -> Result<PemPair, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("consulate agent CA ({domain})"));
    dn.push(DnType::OrganizationName, "consulate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Signs a server or client certificate with the CA given as PEM.
pub fn create_agent_cert(
    ca: &PemPair,
    spec: &AgentCertSpec<'_>,
    validity: Validity,
) -> Result<PemPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(spec.sans())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        identity_san(spec.role, spec.datacenter, spec.domain),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Where a CA or agent certificate and its key live inside a certs directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemPaths {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

/// Consul's CA file names: `<domain>-agent-ca.pem` and `<domain>-agent-ca-key.pem`.
pub fn ca_paths(dir: &Path, domain: &str) -> PemPaths {
    PemPaths {
        cert: dir.join(format!("{domain}-agent-ca.pem")),
        key: dir.join(format!("{domain}-agent-ca-key.pem")),
    }
}

/// Agent certificate file names: `<dc>-<role>-<domain>-<node>.pem` when a node is named,
/// else Consul's numbered `<dc>-<role>-<domain>-<n>.pem` with the first free `n`.
pub fn agent_paths(dir: &Path, spec: &AgentCertSpec<'_>) -> PemPaths {
    let stem = format!("{}-{}-{}", spec.datacenter, spec.role, spec.domain);
    let make = |suffix: &str| PemPaths {
        cert: dir.join(format!("{stem}-{suffix}.pem")),
        key: dir.join(format!("{stem}-{suffix}-key.pem")),
    };
    match spec.node {
        Some(node) => make(node),
        None => (0..)
            .map(|n| make(&n.to_string()))
            .find(|p| !p.cert.exists() && !p.key.exists())
            .expect("an unbounded range always has a free index"),
    }
}

/// Reads a CA written by [`write_pair`].
pub fn read_pair(paths: &PemPaths) -> Result<PemPair, PkiError> {
    let read = |p: &Path| {
        fs::read_to_string(p).map_err(|source| PkiError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok(PemPair {
        cert_pem: read(&paths.cert)?,
        key_pem: read(&paths.key)?,
    })
}

/// Writes a certificate (mode 0644) and its key (mode 0600), refusing to replace existing
/// files unless `force`.
pub fn write_pair(paths: &PemPaths, pair: &PemPair, force: bool) -> Result<(), PkiError> {
    if !force {
        for p in [&paths.cert, &paths.key] {
            if p.exists() {
                return Err(PkiError::Exists(p.clone()));
            }
        }
    }
    if let Some(dir) = paths.cert.parent() {
        fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_file(&paths.key, pair.key_pem.as_bytes(), 0o600)?;
    write_file(&paths.cert, pair.cert_pem.as_bytes(), 0o644)
}

/// Writes `data` to `path` atomically: a reader (an agent starting up) sees the old file
/// or the new one, never a half-written one.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // `mode` applies only on creation: tighten a leftover file too.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Loads the CA from `dir` and writes a new agent certificate next to it; returns its paths.
pub fn issue_agent_cert_files(
    dir: &Path,
    spec: &AgentCertSpec<'_>,
    days: i64,
    force: bool,
) -> Result<PemPaths, PkiError> {
    let ca_paths = ca_paths(dir, spec.domain);
    let ca = read_pair(&ca_paths).map_err(|e| {
        let why = match e {
            PkiError::Io { path, source } => format!("{}: {source}", path.display()),
            other => other.to_string(),
        };
        PkiError::BadCa {
            path: ca_paths.cert.clone(),
            reason: format!("{why} (create one with `consulate tls ca create`)"),
        }
    })?;
    let pair = create_agent_cert(&ca, spec, Validity::days(days))?;
    let paths = agent_paths(dir, spec);
    write_pair(&paths, &pair, force)?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{GeneralName, parse_x509_pem};

    #[test]
    fn server_cert_carries_consul_sans_and_both_usages() {
        let ca = create_ca("consul", Validity::days(1)).unwrap();
        let spec = AgentCertSpec {
            role: Role::Server,
            datacenter: "dc1",
            domain: "consul",
            node: Some("n1"),
        };
        let pair = create_agent_cert(&ca, &spec, Validity::days(1)).unwrap();
        let (_, pem) = parse_x509_pem(pair.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert!(names.contains(&"server.dc1.consul".to_string()));
        assert!(names.contains(&"n1.server.dc1.consul".to_string()));
        assert!(names.contains(&"localhost".to_string()));
        assert!(names.iter().any(|n| n.contains("127")));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
    }

    #[test]
    fn numbered_names_pick_the_first_free_index_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca("consul", Validity::days(1)).unwrap();
        let cp = ca_paths(dir.path(), "consul");
        write_pair(&cp, &ca, false).unwrap();
        assert!(matches!(
            write_pair(&cp, &ca, false),
            Err(PkiError::Exists(_))
        ));
        write_pair(&cp, &ca, true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&cp.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let spec = AgentCertSpec {
            role: Role::Client,
            datacenter: "dc1",
            domain: "consul",
            node: None,
        };
        let first = issue_agent_cert_files(dir.path(), &spec, 1, false).unwrap();
        let second = issue_agent_cert_files(dir.path(), &spec, 1, false).unwrap();
        assert!(first.cert.ends_with("dc1-client-consul-0.pem"));
        assert!(second.cert.ends_with("dc1-client-consul-1.pem"));
    }
}
