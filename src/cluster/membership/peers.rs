//! Asking every other live member the same read-only question over HTTP, for
//! the cluster-wide views of the index (`?scope=cluster`).

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{Membership, pull};
use crate::node::Node;

/// How long one member may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

impl Membership {
    /// `GET path` on every other live member, in parallel: per member, its
    /// answer or why there is none.
    pub async fn ask_members<T: DeserializeOwned>(
        &self,
        node: &Node,
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
