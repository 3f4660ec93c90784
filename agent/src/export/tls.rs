//! TLS for the metrics listener: the certificate and key are loaded and
//! checked against each other at start-up (so a bad pair is reported before
//! any probe is attached), and connections are handshaken off the accept
//! loop (so a client that stalls mid-handshake cannot hold up scrapes).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

/// How long a client gets to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    // The server speaks HTTP/1.1 only (axum's `http1` feature).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out handshaken.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor_task: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(32);
        let acceptor = TlsAcceptor::from(config);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // EMFILE and the like: back off rather than spin.
                        tracing::warn!(error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local, acceptor_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor task holds a sender for as long as it runs; it
            // only stops when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
