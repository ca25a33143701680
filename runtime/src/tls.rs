//! `rediss://`: rustls, with the system's roots or the CA given to
//! [`Config::tls_root_certificate`](crate::Config::tls_root_certificate), and the client certificate given to
//! [`Config::tls_client_certificate`](crate::Config::tls_client_certificate), if any.

use std::fmt;
use std::sync::Arc;

use redis::{ClientTlsConfig, ConnectionAddr, RedisError, TlsCertificates};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::AlertDescription;

use crate::Error;

/// Added to a refused server certificate: the usual causes, and where each is fixed.
const SERVER_CERTIFICATE_ADVICE: &str =
    "the server's TLS certificate was refused: give the CA that signed it to \
     `Config::tls_root_certificate` (unless the system's roots should trust it), and check \
     that the certificate names the host in the URL and has not expired";

/// Added when the server closed the handshake for want of a client certificate.
const CLIENT_CERTIFICATE_REQUIRED_ADVICE: &str =
    "the server requires a TLS client certificate (`tls-auth-clients yes`) and none was given: \
     give one signed by a CA that the server trusts (its `tls-ca-cert-file`) to \
     `Config::tls_client_certificate`";

/// Added when the server refused the client certificate it was given.
const CLIENT_CERTIFICATE_REFUSED_ADVICE: &str =
    "the server refused the TLS client certificate given to `Config::tls_client_certificate`: \
     it must be signed by a CA that the server trusts (its `tls-ca-cert-file`), be meant for \
     client authentication, and not have expired";

/// What to say for the PEM of a private key: what the runtime reads, without a word of what
/// it was given.
const KEY_FORMATS: &str = "give the client certificate's private key, unencrypted, as PEM text \
     (`-----BEGIN PRIVATE KEY-----`, `-----BEGIN RSA PRIVATE KEY-----` or \
     `-----BEGIN EC PRIVATE KEY-----`)";

/// A client certificate chain and its private key, as the PEM text they were given in. Its
/// `Debug` shows neither: the key is a secret, and the chain is of no use in a log.
#[derive(Clone)]
pub(crate) struct ClientCertificate {
    pub(crate) chain_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<set, not shown>")
    }
}

/// `client` as it is for a `redis://` URL; for `rediss://`, made to trust the configured CA
/// and to present the configured client certificate.
pub(crate) fn client(
    client: redis::Client,
    position: usize,
    name: &str,
    url: &str,
    root_certificate: Option<&Vec<u8>>,
    client_certificate: Option<&ClientCertificate>,
) -> Result<redis::Client, Error> {
    // Checked for `redis://` nodes too: a CA given for nothing is likely a URL that lacks
    // its `s`.
    if let Some(pem) = root_certificate {
        check_root_certificate(pem)?;
    }
    let ConnectionAddr::TcpTls { insecure, .. } = client.get_connection_info().addr() else {
        return Ok(client);
    };
    if *insecure {
        return Err(Error::InvalidConfig(format!(
            "Redis URL #{position} ({name}) ends in `#insecure`, which would accept any server \
             certificate, and so any server; remove it, and give a private CA with \
             `Config::tls_root_certificate`"
        )));
    }
    install_crypto_provider();
    if root_certificate.is_none() && client_certificate.is_none() {
        return Ok(client);
    }
    let certificates = TlsCertificates {
        client_tls: client_certificate.map(|certificate| ClientTlsConfig {
            client_cert: certificate.chain_pem.clone(),
            client_key: certificate.key_pem.clone(),
        }),
        root_cert: root_certificate.cloned(),
    };
    // Both were checked already (the root certificate above, the client certificate by
    // `Config::build`); redis-rs's own words on them are kept out of the message all the same,
    // since they may quote the PEM it was given.
    redis::Client::build_with_tls(url, certificates).map_err(|_| {
        Error::InvalidConfig(format!(
            "cannot use the TLS certificates for Redis URL #{position} ({name}): give the PEM \
             of the CA certificate that signed the Redis servers' certificates to \
             `Config::tls_root_certificate`, and a client certificate with its private key to \
             `Config::tls_client_certificate`"
        ))
    })
}

/// Makes sure rustls has a process-wide crypto provider, which redis-rs needs: `ring`,
/// unless the program installed one. Without it, a program whose other dependencies turn
/// on a second provider (rustls's default, `aws-lc-rs`) would panic on its first connection.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one meanwhile; theirs is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Fails unless `pem` holds at least one well-formed PEM certificate: otherwise every
/// connection would fail later with an unknown issuer, far from the mistake.
fn check_root_certificate(pem: &[u8]) -> Result<(), Error> {
    let certificates: Result<Vec<CertificateDer<'_>>, _> =
        CertificateDer::pem_slice_iter(pem).collect();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Ok(()),
        Ok(_) => Err(Error::InvalidConfig(
            "`Config::tls_root_certificate` holds no certificate; give the CA certificate \
             that signed the Redis servers' certificates, as PEM text \
             (`-----BEGIN CERTIFICATE-----` ...)"
                .into(),
        )),
        Err(err) => Err(Error::InvalidConfig(format!(
            "`Config::tls_root_certificate` is not valid PEM: {err}; give the CA certificate \
             that signed the Redis servers' certificates, as PEM text \
             (`-----BEGIN CERTIFICATE-----` ...)"
        ))),
    }
}

/// Fails unless `certificate` holds a well-formed PEM certificate chain and a private key that
/// belongs to its first certificate: otherwise every node would refuse every connection, far
/// from the mistake. The messages never quote the key.
pub(crate) fn check_client_certificate(certificate: &ClientCertificate) -> Result<(), Error> {
    const CHAIN_FORMAT: &str = "give the client's certificate, then any intermediate CA \
         certificates, as PEM text (`-----BEGIN CERTIFICATE-----` ...)";
    let chain: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(&certificate.chain_pem).collect() {
            Ok(chain) => chain,
            Err(err) => {
                return Err(Error::InvalidConfig(format!(
                    "the certificate chain given to `Config::tls_client_certificate` is not \
                     valid PEM ({}); {CHAIN_FORMAT}",
                    pem_error_kind(&err)
                )))
            }
        };
    if chain.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "the certificate chain given to `Config::tls_client_certificate` holds no \
             certificate (are the certificate and the key the wrong way round?); {CHAIN_FORMAT}"
        )));
    }
    let key = match PrivateKeyDer::from_pem_slice(&certificate.key_pem) {
        Ok(key) => key,
        Err(_) if contains(&certificate.key_pem, b"ENCRYPTED") => {
            return Err(Error::InvalidConfig(format!(
                "the private key given to `Config::tls_client_certificate` is encrypted, which \
                 the runtime cannot read; decrypt it (`openssl pkey -in client.key -out \
                 client.plain.key`) and keep the file readable only by the service; \
                 {KEY_FORMATS}"
            )))
        }
        Err(pem::Error::NoItemsFound) => {
            return Err(Error::InvalidConfig(format!(
                "the private key given to `Config::tls_client_certificate` holds no private key \
                 (are the certificate and the key the wrong way round?); {KEY_FORMATS}"
            )))
        }
        Err(err) => {
            return Err(Error::InvalidConfig(format!(
                "the private key given to `Config::tls_client_certificate` is not valid PEM \
                 ({}); {KEY_FORMATS}",
                pem_error_kind(&err)
            )))
        }
    };
    // The provider the connections will use: the program's, else the one the runtime installs.
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    match CertifiedKey::from_der(chain, key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(Error::InvalidConfig(
            "the private key given to `Config::tls_client_certificate` does not belong to the \
             first certificate of the chain; give the key made with that certificate, and put \
             the client's own certificate first, before any intermediate CA certificates"
                .into(),
        )),
        // rustls's words name what it could not use (the key's type, a malformed certificate),
        // never the key itself.
        Err(err) => Err(Error::InvalidConfig(format!(
            "the client certificate given to `Config::tls_client_certificate` cannot be used: \
             {err}; {CHAIN_FORMAT}, and {KEY_FORMATS} (RSA, ECDSA P-256 or P-384, or Ed25519)"
        ))),
    }
}

/// What kind of PEM error `err` is, without the text it quotes (a line of the input, which for
/// a private key could be part of it).
fn pem_error_kind(err: &pem::Error) -> &'static str {
    match err {
        pem::Error::MissingSectionEnd { .. } => "a section has no `-----END` line",
        pem::Error::IllegalSectionStart { .. } => "a `-----BEGIN` line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::NoItemsFound => "nothing in it",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Advice for a connection that TLS ended: the server's certificate refused, a client
/// certificate missing or refused; `None` for any other failure.
pub(crate) fn advice(err: &RedisError) -> Option<&'static str> {
    match rustls_error(err)? {
        rustls::Error::InvalidCertificate(_) => Some(SERVER_CERTIFICATE_ADVICE),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            Some(CLIENT_CERTIFICATE_REQUIRED_ADVICE)
        }
        // Only a client that sent a certificate is told these about it (servers say
        // `CertificateRequired`, or `HandshakeFailure` in TLS 1.2, to a client that sent none).
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA,
        ) => Some(CLIENT_CERTIFICATE_REFUSED_ADVICE),
        _ => None,
    }
}

/// The rustls error that ended `err`'s connection, if any.
fn rustls_error(err: &RedisError) -> Option<&rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        // redis-rs keeps the error in an `Arc`, and both `Arc` and `io::Error` hide the
        // error they wrap from `source()`: look inside each by hand.
        let unshared: &(dyn std::error::Error + 'static) = match current.downcast_ref::<Shared>() {
            Some(shared) => &**shared,
            None => current,
        };
        let unwrapped = unshared
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map_or(unshared, |inner| {
                inner as &(dyn std::error::Error + 'static)
            });
        if let Some(rustls_error) = unwrapped.downcast_ref::<rustls::Error>() {
            return Some(rustls_error);
        }
        cause = current.source();
    }
    None
}
