//! etcd's JWT tokens (`--auth-token jwt,pub-key=P,priv-key=K,sign-method=M,ttl=D`):
//! signed by the member that authenticated the caller, checked by any
//! member with the public key, no state kept. Claims as etcd's:
//! `username`, `revision` (the auth revision when signed: a token older
//! than an auth change is refused with "revision of auth store is old", as
//! etcd does) and `exp`. Without `priv-key` a member only verifies.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `--auth-token` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    Simple,
    Jwt { pub_key: PathBuf, priv_key: Option<PathBuf>, sign_method: String, ttl: Duration },
}

impl FromStr for TokenKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        match parts.next() {
            Some("simple") => Ok(TokenKind::Simple),
            Some("jwt") => {
                let (mut pub_key, mut priv_key, mut sign_method, mut ttl) = (None, None, None, Duration::from_secs(300));
                for p in parts {
                    let (k, v) = p.split_once('=').ok_or_else(|| format!("invalid --auth-token option {p:?}"))?;
                    match k {
                        "pub-key" => pub_key = Some(PathBuf::from(v)),
                        "priv-key" => priv_key = Some(PathBuf::from(v)),
                        "sign-method" => sign_method = Some(v.to_string()),
                        "ttl" => ttl = crate::flags::Interval::from_str(v).map_err(|e| e.to_string())?.get(),
                        _ => return Err(format!("unknown --auth-token option {k:?}")),
                    }
                }
                let pub_key = pub_key.ok_or("--auth-token jwt needs pub-key=")?;
                let sign_method = sign_method.ok_or("--auth-token jwt needs sign-method=")?;
                Ok(TokenKind::Jwt { pub_key, priv_key, sign_method, ttl })
            }
            _ => Err(format!("unknown --auth-token type in {s:?} (simple, or jwt,pub-key=...,priv-key=...,sign-method=...)")),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

pub struct Jwt {
    algorithm: Algorithm,
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwt({:?}, signs: {})", self.algorithm, self.sign.is_some())
    }
}

impl Jwt {
    pub fn load(
        pub_key: &std::path::Path,
        priv_key: Option<&std::path::Path>,
        sign_method: &str,
        ttl: Duration,
    ) -> Result<Self, String> {
        let algorithm = Algorithm::from_str(sign_method).map_err(|_| format!("unsupported JWT sign-method {sign_method:?}"))?;
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let bad = |p: &std::path::Path, e: jsonwebtoken::errors::Error| format!("{}: {e}", p.display());
        let public = read(pub_key)?;
        let verify = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&public),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(&public),
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
                DecodingKey::from_rsa_pem(&public)
            }
            _ => return Err(format!("JWT sign-method {sign_method} needs a key pair (RS*, PS*, ES*)")),
        }
        .map_err(|e| bad(pub_key, e))?;
        let sign = match priv_key {
            None => None,
            Some(p) => {
                let private = read(p)?;
                Some(
                    match algorithm {
                        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&private),
                        Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
                        _ => EncodingKey::from_rsa_pem(&private),
                    }
                    .map_err(|e| bad(p, e))?,
                )
            }
        };
        Ok(Jwt { algorithm, sign, verify, ttl })
    }

    /// A token for `user` at auth revision `revision` (None: verify-only member).
    pub fn sign(&self, user: &str, revision: u64) -> Option<String> {
        let exp = (SystemTime::now() + self.ttl).duration_since(UNIX_EPOCH).ok()?.as_secs();
        let claims = Claims { username: user.to_string(), revision, exp };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, self.sign.as_ref()?).ok()
    }

    /// The user and auth revision of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut v = Validation::new(self.algorithm);
        v.leeway = 0;
        v.required_spec_claims = ["exp".to_string()].into();
        let data = jsonwebtoken::decode::<Claims>(token, &self.verify, &v).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}
