//! A small client of the HTTP API, used by the command line (and handy in tests).
//!
//! `direct.rs`: the smart client — `Client::query_direct` learns the shard map
//! from any node, sends the map requests straight to the holders and reduces
//! here.

mod direct;

use reqwest::Method;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot reach node at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected response from {url}: {message}")]
    Protocol { url: String, message: String },
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// For `query_direct`: the cluster secret the holders' map endpoint needs.
    cluster_secret: Option<String>,
    /// Sent as `Authorization: Bearer …` on every call.
    token: Option<String>,
}

impl Client {
    /// `base` is the node's URL, such as `http://127.0.0.1:7070`.
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            // Idle connections go before a node closes them (its header
            // timeout), so a request never lands on a connection being closed.
            http: reqwest::Client::builder()
                .pool_idle_timeout(std::time::Duration::from_secs(4))
                .build()
                .unwrap_or_default(),
            cluster_secret: None,
            token: None,
        }
    }

    /// Also trusts the certificates in `pem` (PEM): a node serving TLS with
    /// a certificate of its own.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Client, ClientError> {
        let bad = |message: String| ClientError::Protocol {
            url: self.base.clone(),
            message,
        };
        let roots = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
        if roots.is_empty() {
            return Err(bad("the CA file holds no certificate".into()));
        }
        self.http = reqwest::Client::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(4))
            .tls_certs_merge(roots)
            .build()
            .map_err(|e| bad(format!("cannot build an HTTPS client: {e}")))?;
        Ok(self)
    }

    /// Sends `token` (the admin token, or a signed token) on every call.
    /// The node's URL this client calls.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    /// Sends `secret` with the map requests of `query_direct`.
    pub fn with_cluster_secret(mut self, secret: Option<String>) -> Client {
        self.cluster_secret = secret;
        self
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    /// Sends a request and returns the JSON body of a success, or the API's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
            url: url.clone(),
            message: format!(
                "HTTP {status}, not JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            ),
        })?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let error = &value["error"];
        Err(ClientError::Api {
            status,
            code: error["code"].as_str().unwrap_or("unknown").to_string(),
            message: error["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        })
    }
}

/// The innermost cause of a transport error: "Connection refused (os error 111)".
fn unreachable(base: &str, error: &reqwest::Error) -> ClientError {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    ClientError::Unreachable {
        url: base.to_string(),
        message: cause.to_string(),
    }
}
