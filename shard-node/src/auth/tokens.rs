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

    /// A fresh token for the `index`-th Authenticate of this member.
    pub fn mint(index: u64) -> String {
        use rand::Rng;
        let mut rng = rand::rng();
        let letters: String = (0..16).map(|_| rng.random_range(b'a'..=b'z') as char).collect();
        format!("{letters}.{index}")
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
