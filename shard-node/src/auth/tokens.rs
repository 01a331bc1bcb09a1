//! etcd's simple tokens: `<16 random letters>.<index>`, handed out by
//! Authenticate through raft so every member knows them, valid while used
//! within their TTL (etcd's `--auth-token-ttl`, 300 s), kept in memory (a
//! restarted member forgets them; etcd clients authenticate again on
//! "invalid auth token").

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// etcd's `--auth-token-ttl` default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    live: HashMap<String, (String, Instant)>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Self {
        Tokens { ttl, live: HashMap::new() }
    }

    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    pub fn insert(&mut self, token: String, user: String) {
        self.live.insert(token, (user, Instant::now() + self.ttl));
        let now = Instant::now();
        if self.live.len().is_multiple_of(64) {
            self.live.retain(|_, (_, expiry)| *expiry > now);
        }
    }

    /// The user `token` was handed to, its TTL renewed (None: unknown or expired).
    pub fn user(&mut self, token: &str) -> Option<String> {
        let now = Instant::now();
        let (user, expiry) = self.live.get_mut(token)?;
        if *expiry <= now {
            self.live.remove(token);
            return None;
        }
        *expiry = now + self.ttl;
        Some(user.clone())
    }

    /// Ends every token of `user` (deleted, or a new password).
    pub fn invalidate_user(&mut self, user: &str) {
        self.live.retain(|_, (u, _)| u != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_unless_used_and_end_with_their_user() {
        let mut t = Tokens::new(Duration::from_millis(50));
        let tok = tessera_rpc::auth::simple_token(7);
        t.insert(tok.clone(), "alice".into());
        assert_eq!(t.user(&tok).as_deref(), Some("alice"));
        t.invalidate_user("alice");
        assert_eq!(t.user(&tok), None);
        t.insert(tok.clone(), "alice".into());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(t.user(&tok), None);
    }
}
