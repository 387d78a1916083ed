//! The relay's side of the stream: appending events in order.

use std::time::Duration;

use super::{encode, timeouts, StreamError};
use crate::redis_conn::RedisConn;
use crate::store::ChangeEvent;

/// Appends changes to the stream (used by the relay).
pub struct StreamPublisher {
    redis: RedisConn,
    key: String,
    maxlen: u64,
}

impl StreamPublisher {
    pub fn new(url: &str, key: String, maxlen: u64) -> Result<StreamPublisher, StreamError> {
        let redis = RedisConn::single(url, timeouts(Duration::from_secs(5))).map_err(|source| {
            StreamError::Redis {
                server: crate::redis_conn::shown(url),
                op: "parse URL",
                source,
            }
        })?;
        Ok(StreamPublisher { redis, key, maxlen })
    }

    /// Appends the events in order, in one pipeline.
    pub async fn publish(&mut self, events: &[ChangeEvent]) -> Result<(), StreamError> {
        if events.is_empty() {
            return Ok(());
        }
        let err = |op| {
            let server = self.redis.shown().to_string();
            move |source| StreamError::Redis { server, op, source }
        };
        let mut conn = self.redis.get().await.map_err(err("connect"))?;
        let mut pipe = redis::pipe();
        for ev in events {
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*");
            for (k, v) in encode(ev) {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(err("append"))
    }
}
