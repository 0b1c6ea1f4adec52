//! Tokens — pure. The admin token and the cluster secret are compared in
//! constant time. Signed access tokens, in the manner of Arvados Keep's signed
//! locators, let their holder query one database (or alias) until they
//! expire:
//!
//! ```text
//! dram1.<name as hex>.<expires_ms>.<key id>.<HMAC-SHA256(key, "dram1\n<name>\n<expires_ms>") as hex>
//! ```
//!
//! The key id (8 hex digits of the key's sha256) names the key that signed: a
//! token signed with the previous key is accepted while the rotation's grace
//! period lasts.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const PREFIX: &str = "dram1";

/// Whether `a` equals `b`, taking the same time wherever they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A key that signs tokens.
#[derive(Clone)]
pub struct SigningKey {
    key: Vec<u8>,
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    pub fn new(secret: &str) -> SigningKey {
        let id = hex::encode(&Sha256::digest(secret.as_bytes())[..4]);
        SigningKey {
            key: secret.as_bytes().to_vec(),
            id,
        }
    }

    /// A key derived from the cluster secret (when no token key is set).
    pub fn derived_from_secret(secret: &str) -> SigningKey {
        SigningKey::new(&hex::encode(Sha256::digest(
            format!("dram token key\n{secret}").as_bytes(),
        )))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, name: &str, expires_ms: u64) -> Vec<u8> {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return Vec::new();
        };
        mac.update(format!("{PREFIX}\n{name}\n{expires_ms}").as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// A token for `name` valid until `expires_ms`.
    pub fn sign(&self, name: &str, expires_ms: u64) -> String {
        format!(
            "{PREFIX}.{}.{expires_ms}.{}.{}",
            hex::encode(name.as_bytes()),
            self.id,
            hex::encode(self.mac(name, expires_ms))
        )
    }
}

/// The keys a node accepts: the current one, and the previous one until
/// `previous_until_ms`.
#[derive(Debug, Clone)]
pub struct Keys {
    pub current: SigningKey,
    pub previous: Option<(SigningKey, u64)>,
}

/// A token that verified: the database or alias it opens, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub expires_ms: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("not a dram token")]
    Malformed,
    #[error("the token is signed with a key this node does not know")]
    UnknownKey,
    #[error("the token is signed with the previous key, whose grace period is over")]
    RetiredKey,
    #[error("the token's signature does not match (tampered with?)")]
    BadSignature,
    #[error("the token expired")]
    Expired,
}

impl Keys {
    /// The keys a node with this configuration signs and accepts tokens
    /// with, if it has any: `auth.token_key` (else one derived from the
    /// cluster secret), and `auth.previous_token_key` until its grace period
    /// after `started_ms` is over.
    pub fn of(auth: &crate::config::AuthConfig, started_ms: u64) -> Option<Keys> {
        let current = match (&auth.token_key, &auth.cluster_secret) {
            (Some(key), _) => SigningKey::new(key),
            (None, Some(secret)) => SigningKey::derived_from_secret(secret),
            (None, None) => return None,
        };
        let until =
            started_ms.saturating_add(auth.previous_token_key_grace_secs.saturating_mul(1000));
        let previous = auth
            .previous_token_key
            .as_deref()
            .map(|key| (SigningKey::new(key), until));
        Some(Keys { current, previous })
    }

    /// Checks `token` at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Grant, TokenError> {
        let fields: Vec<&str> = token.split('.').collect();
        let [prefix, name_hex, expires, key_id, mac_hex] = fields[..] else {
            return Err(TokenError::Malformed);
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        let name = hex::decode(name_hex)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|name| !name.is_empty())
            .ok_or(TokenError::Malformed)?;
        let expires_ms: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        let mac = hex::decode(mac_hex).map_err(|_| TokenError::Malformed)?;
        let key = if key_id == self.current.id {
            &self.current
        } else {
            match &self.previous {
                Some((previous, until)) if previous.id == key_id => {
                    if now_ms > *until {
                        return Err(TokenError::RetiredKey);
                    }
                    previous
                }
                _ => return Err(TokenError::UnknownKey),
            }
        };
        if !constant_time_eq(&key.mac(&name, expires_ms), &mac) {
            return Err(TokenError::BadSignature);
        }
        if now_ms > expires_ms {
            return Err(TokenError::Expired);
        }
        Ok(Grant { name, expires_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            current: SigningKey::new("new key"),
            previous: Some((SigningKey::new("old key"), 1_000)),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let keys = keys();
        let token = keys.current.sign("sales", 5_000);
        assert_eq!(
            keys.verify(&token, 4_999),
            Ok(Grant {
                name: "sales".into(),
                expires_ms: 5_000
            })
        );
        assert_eq!(keys.verify(&token, 5_001), Err(TokenError::Expired));
    }

    #[test]
    fn tampering_is_refused() {
        let keys = keys();
        let token = keys.current.sign("sales", 5_000);
        // Another database, a later expiry, a changed signature.
        let other = token.replacen(&hex::encode("sales"), &hex::encode("sales2"), 1);
        assert_eq!(keys.verify(&other, 0), Err(TokenError::BadSignature));
        let later = token.replacen(".5000.", ".9000.", 1);
        assert_eq!(keys.verify(&later, 0), Err(TokenError::BadSignature));
        let mut flipped = token.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(keys.verify(&flipped, 0), Err(TokenError::BadSignature));
        for bad in ["", "dram1", "x.y.z.w.v", "dram1.zz.1.k.00", "dram1..1.k.00"] {
            assert_eq!(keys.verify(bad, 0), Err(TokenError::Malformed), "{bad}");
        }
        let stranger = SigningKey::new("someone else").sign("sales", 5_000);
        assert_eq!(keys.verify(&stranger, 0), Err(TokenError::UnknownKey));
    }

    #[test]
    fn the_previous_key_is_accepted_during_its_grace_period() {
        let keys = keys();
        let (old, until) = keys.previous.clone().unwrap();
        let token = old.sign("sales", 9_000);
        assert!(keys.verify(&token, until).is_ok());
        assert_eq!(keys.verify(&token, until + 1), Err(TokenError::RetiredKey));
    }

    #[test]
    fn derived_keys_differ_from_the_secret() {
        let derived = SigningKey::derived_from_secret("s");
        assert_ne!(derived.id(), SigningKey::new("s").id());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Arbitrary text is never taken as a token, and never panics.
            #[test]
            fn arbitrary_text_never_verifies(text in ".{0,200}") {
                prop_assert!(keys().verify(&text, 0).is_err());
            }

            /// Any signed token verifies for its name until it expires; any
            /// change of one character of it is refused.
            #[test]
            fn signed_tokens_verify_and_any_change_is_refused(
                name in "[A-Za-z0-9._-]{1,64}",
                expires in 1u64..u64::MAX / 2,
                position in any::<prop::sample::Index>(),
                replacement in "[0-9a-z.]",
            ) {
                let keys = keys();
                let token = keys.current.sign(&name, expires);
                let grant = keys.verify(&token, expires).unwrap();
                prop_assert_eq!(&grant.name, &name);
                let mut chars: Vec<char> = token.chars().collect();
                let at = position.index(chars.len());
                let new = replacement.chars().next().unwrap();
                prop_assume!(chars[at] != new);
                chars[at] = new;
                let changed: String = chars.into_iter().collect();
                // A changed token opens nothing else (at most, a spelling
                // that decodes to the same grant, such as a leading zero).
                let opened = keys.verify(&changed, 0);
                prop_assert!(opened.as_ref().map_or(true, |g| *g == grant), "{opened:?}");
            }
        }
    }
}
