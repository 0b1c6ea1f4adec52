//! Talking to the other members over HTTP: every request carries the cluster
//! secret and id (`pull`, `peer_headers`); `ask_members` asks every other live
//! member the same read-only question (the index's `?scope=cluster` views).

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::Membership;
use crate::local::Local;

/// How long one member may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

impl Membership {
    /// `GET path` on every other live member, in parallel: per member, its
    /// answer or why there is none.
    pub async fn ask_members<T: DeserializeOwned>(
        &self,
        node: &Local,
        path: &str,
    ) -> Vec<(String, Result<T, String>)> {
        let members = self.members().await;
        let asks = members
            .into_iter()
            .filter(|m| m.live && !m.is_self)
            .map(|member| async move {
                let answer = match member.node.as_ref().map(|n| n.url()) {
                    None => Err("its HTTP address is not known yet".to_string()),
                    Some(http) => {
                        match tokio::time::timeout(
                            ASK_TIMEOUT,
                            pull::<T>(self.http_client(), node, &http, path),
                        )
                        .await
                        {
                            Ok(answer) => answer,
                            Err(_) => Err(format!("no answer in {} s", ASK_TIMEOUT.as_secs())),
                        }
                    }
                };
                (member.id, answer)
            });
        futures::future::join_all(asks).await
    }
}

/// `GET {http}{path}` with the cluster secret, as JSON (`http`: a member's
/// base URL, or `host:port` for plain HTTP).
pub(super) async fn pull<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    node: &Local,
    http: &str,
    path: &str,
) -> Result<T, String> {
    let mut request = client.get(format!("{}{path}", crate::net::base_url(http)));
    if let Some(secret) = node.config().auth.peer_secret() {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{path} answered HTTP {status}"));
    }
    response.json::<T>().await.map_err(|e| e.to_string())
}

/// Headers every node-to-node request carries: the cluster id, so that a
/// member of another cluster is refused even if it knows the secret.
pub(super) fn peer_headers(cluster_id: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = reqwest::header::HeaderValue::from_str(cluster_id) {
        headers.insert(crate::net::CLUSTER_HEADER, value);
    }
    headers
}
