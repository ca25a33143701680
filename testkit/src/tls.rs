//! TLS for the nodes: a CA and a server certificate made afresh for every
//! [`Cluster`](crate::Cluster), so no key is ever checked in or reused.
//!
//! Every node of a cluster serves the same certificate, valid for
//! `127.0.0.1` and `localhost`, signed by the cluster's own CA; clients trust
//! that CA through [`Cluster::tls_ca_pem`](crate::Cluster::tls_ca_pem).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::Error;

/// Prefix of the temporary directory that holds a cluster's certificates.
const TEMP_DIR_PREFIX: &str = "cluster-singleton-tls-";

/// The names the server certificate is valid for: where the nodes listen.
const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// Only the owner may read a private key; `redis-server` runs as the test's user.
const PRIVATE_KEY_MODE: u32 = 0o600;

/// A cluster's CA and server certificate, as the files `redis-server` reads
/// at every start of a node, and the CA's PEM for clients.
#[derive(Debug)]
pub(crate) struct Certificates {
    /// Holds `ca.crt`, `server.crt` and `server.key`; removed on drop.
    dir: TempDir,
    ca_pem: String,
}

impl Certificates {
    /// A new CA, and a server certificate for the loopback names signed by it.
    pub(crate) fn generate() -> Result<Certificates, Error> {
        let (ca_pem, issuer) =
            new_ca("cluster-singleton-testkit CA").map_err(certificates_error)?;
        let (server_pem, server_key_pem) = new_server(&issuer).map_err(certificates_error)?;
        let dir = tempfile::Builder::new()
            .prefix(TEMP_DIR_PREFIX)
            .tempdir()
            .map_err(Error::TempDir)?;
        let certificates = Certificates { dir, ca_pem };
        let write = |path: PathBuf, contents: &str| fs::write(path, contents);
        write(certificates.ca_file(), &certificates.ca_pem).map_err(Error::TempDir)?;
        write(certificates.cert_file(), &server_pem).map_err(Error::TempDir)?;
        write(certificates.key_file(), &server_key_pem).map_err(Error::TempDir)?;
        fs::set_permissions(
            certificates.key_file(),
            fs::Permissions::from_mode(PRIVATE_KEY_MODE),
        )
        .map_err(Error::TempDir)?;
        Ok(certificates)
    }

    /// The CA certificate, PEM-encoded.
    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Makes `redis-server` listen with TLS only, on `port`: `--port 0` turns
    /// the plain-text listener off. Clients are not asked for certificates.
    pub(crate) fn listen(&self, command: &mut Command, port: u16) {
        command
            .args(["--port", "0", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(self.cert_file())
            .arg("--tls-key-file")
            .arg(self.key_file())
            .arg("--tls-ca-cert-file")
            .arg(self.ca_file())
            .args(["--tls-auth-clients", "no"]);
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// A redis-rs client for the `rediss://` URL `url` that trusts the CA
/// `ca_pem` and no other.
pub(crate) fn client(url: &str, ca_pem: &str) -> redis::RedisResult<redis::Client> {
    install_crypto_provider();
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem.as_bytes().to_vec()),
        },
    )
}

/// Returns the PEM of a CA certificate made afresh, which has signed nothing:
/// a client that trusts it, and only it, refuses every TLS node of every
/// [`Cluster`](crate::Cluster). For tests of what a wrong CA does.
///
/// Only with the `tls` feature.
///
/// # Errors
///
/// [`Error::Certificates`] if the certificate cannot be made.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
/// let pem = cluster_singleton_testkit::unrelated_ca_pem()?;
/// assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
/// assert_ne!(pem, cluster_singleton_testkit::unrelated_ca_pem()?);
/// # Ok(())
/// # }
/// ```
pub fn unrelated_ca_pem() -> Result<String, Error> {
    new_ca("cluster-singleton-testkit unrelated CA")
        .map(|(pem, _issuer)| pem)
        .map_err(certificates_error)
}

/// A self-signed CA: its certificate's PEM, and what signs with it.
fn new_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok((certificate.pem(), Issuer::new(params, key)))
}

/// A server certificate for [`SERVER_NAMES`] signed by `issuer`: its PEM and
/// its private key's PEM.
fn new_server(issuer: &Issuer<'_, KeyPair>) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAMES[0]);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, issuer)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// redis-rs needs a process-wide rustls crypto provider: `ring`, unless the
/// process installed one.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one meanwhile.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn certificates_error(err: rcgen::Error) -> Error {
    Error::Certificates(err.to_string())
}
