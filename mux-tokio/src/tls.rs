//! TLS for the client's `wss://` URLs (feature `tls`): rustls, trusting the webpki roots
//! unless the application passes its own `rustls::ClientConfig`.

use std::error::Error;

#[cfg(feature = "tls")]
use std::sync::Arc;

/// The configuration for a `wss://` URL when the application passed none: the Mozilla roots
/// of `webpki-roots`, TLS 1.2 and 1.3. The crypto provider is the one the application
/// installed for the process, else ring: rustls panics when it has to pick between two it
/// was compiled with, which another crate's features can cause.
#[cfg(feature = "tls")]
pub(crate) fn default_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The rustls error inside an I/O error's payload (tokio-rustls reports TLS failures as
/// I/O errors), if there is one.
#[cfg(feature = "tls")]
pub(crate) fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Whether an I/O error's payload is a TLS failure.
pub(crate) fn is_tls_error(inner: &(dyn Error + Send + Sync + 'static)) -> bool {
    #[cfg(feature = "tls")]
    {
        inner.is::<rustls::Error>()
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = inner;
        false
    }
}
