//! `rediss://`: rustls, with the system's roots or the CA given to
//! [`Config::tls_root_certificate`].

use redis::{ConnectionAddr, RedisError, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::{Config, Error};

/// Added to a refused server certificate: the usual causes, and where each is fixed.
pub(crate) const CERTIFICATE_ADVICE: &str =
    "the server's TLS certificate was refused: give the CA that signed it to \
     `Config::tls_root_certificate` (unless the system's roots should trust it), and check \
     that the certificate names the host in the URL and has not expired";

/// `client` as it is for a `redis://` URL; for `rediss://`, made to trust the configured CA.
pub(crate) fn client(
    client: redis::Client,
    position: usize,
    name: &str,
    url: &str,
    config: &Config,
) -> Result<redis::Client, Error> {
    // Checked for `redis://` nodes too: a CA given for nothing is likely a URL that lacks
    // its `s`.
    if let Some(pem) = &config.tls_root_certificate {
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
    let Some(pem) = &config.tls_root_certificate else {
        return Ok(client);
    };
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.clone()),
    };
    redis::Client::build_with_tls(url, certificates).map_err(|err| {
        Error::InvalidConfig(format!(
            "cannot use `Config::tls_root_certificate` for Redis URL #{position} ({name}): {err}; \
             give the PEM of the CA certificate that signed the Redis servers' certificates"
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

/// Whether `err` is rustls refusing the server's certificate.
pub(crate) fn is_certificate_error(err: &RedisError) -> bool {
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
        if let Some(rustls::Error::InvalidCertificate(_)) = unwrapped.downcast_ref() {
            return true;
        }
        cause = current.source();
    }
    false
}
