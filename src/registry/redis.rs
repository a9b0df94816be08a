//! The Redis registry. One key per session ID, `qrelay:publisher:{session ID}`, whose
//! value is `{node URL} {nonce}`: the URL other nodes reach the publishing node at, and
//! a random nonce of this claim; its expiry is the lease. A claim sets the value when
//! the key is absent or this node's own (a publisher replaced on this node: the new one
//! claims anew); refresh and release check the whole value first (Lua scripts, atomic on
//! the server), so neither a node whose lease was taken over nor a replaced publisher of
//! the same node ever extends or deletes the new holder's.
//!
//! `rediss://` connects over TLS and `redis://:password@host` (or `user:password@`)
//! authenticates: the redis crate does both from the URL.
//!
//! The connection is made on first use and re-made by the connection manager after a
//! failure; every request is bounded by `timeout`, so a Redis that hangs costs a caller
//! that long and never more.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

use super::{Claim, Holder, Pending, Registry, RegistryError};
use crate::relay::node::NodeUrl;

/// Prefix of the registry's keys, so a shared Redis keeps them apart from others'.
const KEY_PREFIX: &str = "qrelay:publisher:";

/// Takes the lease when it is free or this node's (ARGV: value, node URL, lease ms);
/// answers `{1, value}`, or `{0, holder's value}`.
const CLAIM: &str = r"local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[2] or string.sub(v, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. ' ' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return {1, ARGV[1]}
end
return {0, v}";

/// Extends the lease only while it is still ours.
const REFRESH: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Deletes the lease only while it is still ours.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Leases in a Redis server.
pub struct Redis {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    /// This node's URL, the value of its leases.
    me: String,
    lease: Duration,
    timeout: Duration,
    claim: redis::Script,
    refresh: redis::Script,
    release: redis::Script,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("me", &self.me).field("lease", &self.lease).finish_non_exhaustive()
    }
}

impl Redis {
    /// A registry at `url` (`redis://host:port[/db]`, `redis+unix:///path[?db=N]`) for the node reached at `me`. Does
    /// not connect yet: a Redis that is down must not keep the relay from starting.
    pub fn new(url: &str, me: &NodeUrl, lease: Duration, timeout: Duration) -> Result<Self, RegistryError> {
        let client = redis::Client::open(url).map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
            me: me.to_string(),
            lease,
            timeout,
            claim: redis::Script::new(CLAIM),
            refresh: redis::Script::new(REFRESH),
            release: redis::Script::new(RELEASE),
        })
    }

    /// The shared connection, made now if there is none.
    async fn conn(&self) -> Result<ConnectionManager, RegistryError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let c = self
            .client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `op` on the connection within the time limit.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, RegistryError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.conn().await?;
            op(conn).await.map_err(|e| RegistryError::Unavailable(e.to_string()))
        };
        tokio::time::timeout(self.timeout, work).await.map_err(|_| RegistryError::Timeout(self.timeout))?
    }

    fn key(session_id: &str) -> String {
        format!("{KEY_PREFIX}{session_id}")
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis().try_into().unwrap_or(u64::MAX)
    }
}

impl Registry for Redis {
    fn resolve<'a>(&'a self, session_id: &'a str) -> Pending<'a, Option<NodeUrl>> {
        Box::pin(async move {
            let key = Self::key(session_id);
            let value: Option<String> =
                self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await }).await?;
            match value {
                None => Ok(None),
                Some(v) => NodeUrl::parse(node_of(&v)).map(Some).map_err(|_| RegistryError::BadValue(v)),
            }
        })
    }

    fn claim<'a>(&'a self, session_id: &'a str) -> Pending<'a, Claim> {
        Box::pin(async move {
            let key = Self::key(session_id);
            let value = format!("{} {}", self.me, nonce()?);
            let (me, ms) = (self.me.clone(), self.lease_ms());
            let script = &self.claim;
            let (set, holder): (i64, String) =
                self.run(|mut c| async move {
                    script.key(key).arg(&value).arg(me).arg(ms).invoke_async(&mut c).await
                })
                .await?;
            if set == 1 {
                Ok(Claim::Held(Holder(holder)))
            } else {
                Ok(Claim::Taken(node_of(&holder).to_owned()))
            }
        })
    }

    fn refresh<'a>(&'a self, session_id: &'a str, holder: &'a Holder) -> Pending<'a, bool> {
        Box::pin(async move {
            let key = Self::key(session_id);
            let (value, ms) = (holder.0.clone(), self.lease_ms());
            let script = &self.refresh;
            let n: i64 = self
                .run(|mut c| async move { script.key(key).arg(value).arg(ms).invoke_async(&mut c).await })
                .await?;
            Ok(n == 1)
        })
    }

    fn release<'a>(&'a self, session_id: &'a str, holder: &'a Holder) -> Pending<'a, ()> {
        Box::pin(async move {
            let key = Self::key(session_id);
            let value = holder.0.clone();
            let script = &self.release;
            let _: i64 = self
                .run(|mut c| async move { script.key(key).arg(value).invoke_async(&mut c).await })
                .await?;
            Ok(())
        })
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }
}

/// The node URL of a lease's value (`{node URL} {nonce}`; values of older builds are the
/// URL alone).
fn node_of(value: &str) -> &str {
    value.split(' ').next().unwrap_or(value)
}

/// 64 random bits, hex: one claim's mark.
fn nonce() -> Result<String, RegistryError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RegistryError::Unavailable("no randomness for a lease nonce".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
