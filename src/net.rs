//! Node to node: the client members call each other with (trusting the
//! cluster's certificates), the header naming the cluster, the base URL of a
//! member from the address it gossips, and reading the TLS files a config
//! names.

use std::path::Path;
use std::time::Duration;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// The header carrying the cluster id on node-to-node calls.
pub const CLUSTER_HEADER: &str = "x-dram-cluster";

/// What is wrong with the file a config field names.
pub(crate) fn field_error(field: &str, path: &Path, e: &dyn std::fmt::Display) -> String {
    format!("config field `{field}` ({}): {e}", path.display())
}

/// Every PEM certificate in `path` (at least one).
pub(crate) fn read_certificates(
    field: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| field_error(field, path, &e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| field_error(field, path, &format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(field_error(field, path, &"holds no PEM certificate"));
    }
    Ok(certs)
}

pub(crate) fn read_key(field: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| field_error(field, path, &e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| field_error(field, path, &format!("not a PEM private key: {e}")))
}

/// A client for node-to-node calls: with TLS on, it trusts the certificates
/// of `http.tls_ca` (default: `http.tls_cert`'s) beside the system's roots,
/// so that members reach each other over HTTPS.
pub(crate) fn peer_client(config: &Config) -> reqwest::ClientBuilder {
    let http = &config.http;
    // Idle connections are dropped here before a member's header timeout
    // closes them there: a request never races that close.
    let idle = Duration::from_millis(http.header_timeout_ms / 2).min(Duration::from_secs(90));
    let builder = reqwest::Client::builder().pool_idle_timeout(idle);
    if !http.tls() {
        return builder;
    }
    let Some((field, path)) = [
        ("http.tls_ca", &http.tls_ca),
        ("http.tls_cert", &http.tls_cert),
    ]
    .into_iter()
    .find_map(|(field, path)| Some((field, path.as_ref()?))) else {
        return builder;
    };
    let roots = read_certificates(field, path).and_then(|certs| {
        certs
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| field_error(field, path, &e))
    });
    match roots {
        Ok(roots) => builder.tls_certs_merge(roots),
        Err(e) => {
            tracing::warn!(error = %e, "node-to-node calls trust only the system's roots");
            builder
        }
    }
}

/// The base URL of a member's API from the address it gossips: `host:port`
/// (plain HTTP) or a full `http(s)://host:port`.
pub(crate) fn base_url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// Makes aws-lc-rs the process's TLS crypto provider (rustls cannot pick one
/// by itself when, as here, another crate brings ring too). Idempotent.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
