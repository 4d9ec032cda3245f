//! The URLs Exec, Attach and PortForward hand out: one random token per request, used once, valid for a
//! minute, at most `max` outstanding (kubelet's streaming server keeps the same rules).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// How long a URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Attach {
        container_id: String,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        pod_id: String,
        /// The ports asked for; empty: whatever the client's streams name.
        ports: Vec<u16>,
    },
}

impl Pending {
    /// The URL path segment it is served under.
    pub fn kind(&self) -> &'static str {
        match self {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }
}

/// The outstanding tokens.
#[derive(Debug)]
pub struct Tokens {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, (Instant, Pending)>>,
}

/// No room for another token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} streaming URLs are outstanding, the most allowed; use or let some expire first")]
pub struct TooMany(pub usize);

impl Tokens {
    pub fn new(ttl: Duration, max: usize) -> Tokens {
        Tokens {
            ttl,
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh token for `what`.
    pub fn insert(&self, what: Pending) -> Result<String, TooMany> {
        self.insert_at(what, Instant::now())
    }

    fn insert_at(&self, what: Pending, now: Instant) -> Result<String, TooMany> {
        let mut map = self.lock();
        map.retain(|_, (born, _)| now.duration_since(*born) < self.ttl);
        if map.len() >= self.max {
            return Err(TooMany(map.len()));
        }
        loop {
            let token = random_token();
            if !map.contains_key(&token) {
                map.insert(token.clone(), (now, what));
                return Ok(token);
            }
        }
    }

    /// The request behind `token` if it is of `kind` and still valid; it cannot be used again. A token of
    /// another kind is left alone.
    pub fn take(&self, token: &str, kind: &str) -> Option<Pending> {
        self.take_at(token, kind, Instant::now())
    }

    fn take_at(&self, token: &str, kind: &str, now: Instant) -> Option<Pending> {
        let mut map = self.lock();
        let (born, what) = map.get(token)?;
        if now.duration_since(*born) >= self.ttl {
            map.remove(token);
            return None;
        }
        if what.kind() != kind {
            return None;
        }
        map.remove(token).map(|(_, what)| what)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Pending)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 128 random bits, URL-safe base64 without padding (22 characters).
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
    {
        // Never expected on Linux; a guessable token would be a hole, so mix what there is and say so.
        tracing::error!(error = %e, "cannot read /dev/urandom for a streaming token");
        let t = crate::pod::now_nanos() as u128 ^ ((std::process::id() as u128) << 64);
        bytes.copy_from_slice(&t.to_le_bytes());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pf(port: u16) -> Pending {
        Pending::PortForward {
            pod_id: "p".into(),
            ports: vec![port],
        }
    }

    #[test]
    fn a_token_is_used_once() {
        let t = Tokens::new(TOKEN_TTL, 10);
        let a = t.insert(pf(80)).unwrap();
        assert_eq!(a.len(), 22);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(t.take(&a, "portforward"), Some(pf(80)));
        assert_eq!(t.take(&a, "portforward"), None);
        assert_eq!(t.take("nonsense", "portforward"), None);
    }

    #[test]
    fn a_token_of_another_kind_is_not_served_nor_burnt() {
        let t = Tokens::new(TOKEN_TTL, 10);
        let a = t.insert(pf(80)).unwrap();
        assert_eq!(t.take(&a, "exec"), None);
        assert_eq!(t.take(&a, "portforward"), Some(pf(80)));
    }

    #[test]
    fn tokens_expire() {
        let t = Tokens::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let a = t.insert_at(pf(1), now).unwrap();
        let b = t.insert_at(pf(2), now).unwrap();
        assert_eq!(
            t.take_at(&a, "portforward", now + Duration::from_secs(59)),
            Some(pf(1))
        );
        assert_eq!(
            t.take_at(&b, "portforward", now + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn outstanding_tokens_are_bounded_and_expired_ones_make_room() {
        let t = Tokens::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        let tokens: Vec<String> = (0..2).map(|i| t.insert_at(pf(i), now).unwrap()).collect();
        assert_ne!(tokens[0], tokens[1]);
        assert_eq!(t.insert_at(pf(3), now), Err(TooMany(2)));
        // Using one frees its slot; so does expiry.
        t.take_at(&tokens[0], "portforward", now).unwrap();
        t.insert_at(pf(4), now).unwrap();
        assert_eq!(t.insert_at(pf(5), now), Err(TooMany(2)));
        t.insert_at(pf(6), now + Duration::from_secs(61)).unwrap();
    }
}
