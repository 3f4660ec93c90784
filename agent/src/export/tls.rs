//! TLS for the metrics listener: the certificate and key are loaded and
//! checked against each other at start-up, so a bad pair is reported before
//! any probe is attached. Handshakes happen in each connection's own task,
//! under the listener's header timeout and connection cap
//! (`server::connection`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS {what} {path}: {problem}")]
    Pem { what: &'static str, path: PathBuf, problem: String },
    #[error("TLS certificate {cert} and key {key} cannot be used together")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// A server configuration for `cert` (PEM chain, leaf first) and `key`.
/// rustls checks that the key is the certificate's.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read =
        |what, path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source });
    let pem_error = |what, path: &Path, problem: String| TlsError::Pem { what, path: path.into(), problem };

    let cert_pem = read("certificate", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error("certificate", cert, format!("invalid PEM: {err}")))?;
    if chain.is_empty() {
        return Err(pem_error("certificate", cert, "no CERTIFICATE block found".into()));
    }
    let key_pem = read("key", key)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| {
        pem_error("key", key, format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected): {err}"))
    })?;

    // The ring provider explicitly: no process-wide default to install, and
    // no second crypto library linked in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair = |source| TlsError::Pair { cert: cert.into(), key: key.into(), source };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(pair)?;
    // The server speaks HTTP/1.1 only (hyper's `http1`).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
