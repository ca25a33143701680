//! TLS for the nodes: a CA, a server certificate and a client certificate
//! made afresh for every [`Cluster`](crate::Cluster), so no key is ever
//! checked in or reused.
//!
//! Every node of a cluster serves the same certificate, valid for
//! `127.0.0.1` and `localhost`, signed by the cluster's own CA; clients trust
//! that CA through [`Cluster::tls_ca_pem`](crate::Cluster::tls_ca_pem). Nodes
//! that require client certificates accept those the same CA signed, such as
//! [`Cluster::tls_client_certificate`](crate::Cluster::tls_client_certificate).

use std::fmt;
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

/// The common name of the client certificates the test kit makes.
const CLIENT_NAME: &str = "cluster-singleton-testkit client";

/// A client certificate and its private key, both PEM-encoded, for a client
/// of TLS nodes that require one (see
/// [`ClusterBuilder::tls_auth_clients`](crate::ClusterBuilder::tls_auth_clients)).
/// Made afresh each time; its `Debug` shows neither. Only with the `tls`
/// feature.
///
/// # Example
///
/// ```no_run
/// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
/// use cluster_singleton_testkit::Cluster;
///
/// let cluster = Cluster::builder().nodes(3).tls_auth_clients(true).start()?;
/// let client = cluster.tls_client_certificate();
/// assert!(client.certificate_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(client.private_key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientCertificate {
    certificate_pem: String,
    private_key_pem: String,
}

impl ClientCertificate {
    /// Returns the client certificate, PEM-encoded (`-----BEGIN CERTIFICATE-----`).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let client = cluster_singleton_testkit::unrelated_client_certificate()?;
    /// assert!(client.certificate_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Returns the certificate's private key, PEM-encoded (PKCS#8,
    /// `-----BEGIN PRIVATE KEY-----`, unencrypted).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), cluster_singleton_testkit::Error> {
    /// let client = cluster_singleton_testkit::unrelated_client_certificate()?;
    /// assert!(client.private_key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCertificate { .. }")
    }
}

/// A cluster's CA, server certificate and client certificate, as the files
/// `redis-server` reads at every start of a node, and the PEMs for clients.
#[derive(Debug)]
pub(crate) struct Certificates {
    /// Holds `ca.crt`, `server.crt` and `server.key`; removed on drop.
    dir: TempDir,
    ca_pem: String,
    client: ClientCertificate,
    /// Whether the nodes require a client certificate signed by the CA.
    auth_clients: bool,
}

impl Certificates {
    /// A new CA, and a server certificate for the loopback names and a client
    /// certificate, both signed by it; the nodes require client certificates
    /// when `auth_clients`.
    pub(crate) fn generate(auth_clients: bool) -> Result<Certificates, Error> {
        let (ca_pem, issuer) =
            new_ca("cluster-singleton-testkit CA").map_err(certificates_error)?;
        let (server_pem, server_key_pem) = new_server(&issuer).map_err(certificates_error)?;
        let client = new_client(&issuer).map_err(certificates_error)?;
        let dir = tempfile::Builder::new()
            .prefix(TEMP_DIR_PREFIX)
            .tempdir()
            .map_err(Error::TempDir)?;
        let certificates = Certificates {
            dir,
            ca_pem,
            client,
            auth_clients,
        };
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

    /// The client certificate the CA signed.
    pub(crate) fn client(&self) -> &ClientCertificate {
        &self.client
    }

    /// Makes `redis-server` listen with TLS only, on `port`: `--port 0` turns
    /// the plain-text listener off. Clients must show a certificate the CA
    /// signed only when the nodes were made to require one.
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
            .arg("--tls-auth-clients")
            .arg(if self.auth_clients { "yes" } else { "no" });
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

/// A redis-rs client for the `rediss://` URL `url` that trusts the CA of
/// `certificates` and no other, and shows the client certificate it signed to
/// nodes that ask for one.
pub(crate) fn client(url: &str, certificates: &Certificates) -> redis::RedisResult<redis::Client> {
    install_crypto_provider();
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: certificates.client.certificate_pem.as_bytes().to_vec(),
                client_key: certificates.client.private_key_pem.as_bytes().to_vec(),
            }),
            root_cert: Some(certificates.ca_pem.as_bytes().to_vec()),
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

/// Returns a client certificate and key made afresh, signed by a CA made
/// afresh that signed nothing else: every TLS node of every
/// [`Cluster`](crate::Cluster) that requires client certificates refuses it.
/// For tests of what a client certificate from the wrong CA does.
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
/// let client = cluster_singleton_testkit::unrelated_client_certificate()?;
/// assert!(client.certificate_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(!format!("{client:?}").contains("PRIVATE KEY"));
/// # Ok(())
/// # }
/// ```
pub fn unrelated_client_certificate() -> Result<ClientCertificate, Error> {
    new_ca("cluster-singleton-testkit unrelated client CA")
        .and_then(|(_pem, issuer)| new_client(&issuer))
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

/// A client certificate signed by `issuer`, meant for client authentication.
fn new_client(issuer: &Issuer<'_, KeyPair>) -> Result<ClientCertificate, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, CLIENT_NAME);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, issuer)?;
    Ok(ClientCertificate {
        certificate_pem: certificate.pem(),
        private_key_pem: key.serialize_pem(),
    })
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
