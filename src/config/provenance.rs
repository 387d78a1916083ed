//! Which layer set each key, and the effective configuration as an operator may see
//! it: `GET /admin/config` answers [`Provenance::to_json`], with every password and
//! secret redacted.
//!
//! Redaction is by shape, not by a list of today's keys, so a key added later is
//! covered without anyone remembering to add it: any URL's password (`scheme://user:
//! PASSWORD@host`, also inside lists such as `redis_urls`), any `password=` URL query
//! parameter, and the whole value of any key whose name says it is a secret
//! (`password`, `secret`, `token`, `headers`).

use serde_json::{Map, Value};

/// Where a key's value came from, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// `config/default.toml`, compiled in.
    Default,
    /// The `--config` / `READTIER_CONFIG` file.
    File,
    /// A `READTIER_*` environment variable.
    Env,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Default => "default",
            Layer::File => "file",
            Layer::Env => "env",
        }
    }
}

/// One key: its merged value (as the layers wrote it, before validation) and the
/// layer that set it last.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// Dotted: `l1.ttl`.
    pub key: String,
    pub value: toml::Value,
    pub layer: Layer,
    /// The file's path or the variable's name (`config/default.toml` for defaults).
    pub source: String,
}

/// Every key of the configuration, in the default file's key order (sorted).
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub keys: Vec<KeySource>,
}

/// What a redacted secret is shown as.
pub const REDACTED: &str = "***";

impl Provenance {
    /// `{"keys": {"l1.ttl": {"value": "60s", "layer": "default", "source":
    /// "config/default.toml"}, …}}`, secrets redacted.
    pub fn to_json(&self) -> Value {
        let mut keys = Map::new();
        for k in &self.keys {
            let value = redact_value(&k.key, &k.value);
            keys.insert(
                k.key.clone(),
                serde_json::json!({
                    "value": value,
                    "layer": k.layer.as_str(),
                    "source": k.source,
                }),
            );
        }
        serde_json::json!({ "keys": keys })
    }

    /// The entry of one dotted key.
    pub fn get(&self, key: &str) -> Option<&KeySource> {
        self.keys.iter().find(|k| k.key == key)
    }
}

/// Whether a key's whole value is a secret, by its name.
fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    ["password", "secret", "token", "headers"]
        .iter()
        .any(|w| last.contains(w))
}

/// A value as JSON, redacted for its key.
fn redact_value(key: &str, value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) if is_secret_key(key) && !s.is_empty() => {
            Value::String(REDACTED.into())
        }
        toml::Value::String(s) => Value::String(redact_urls(s)),
        toml::Value::Array(a) => Value::Array(a.iter().map(|v| redact_value(key, v)).collect()),
        _ if is_secret_key(key) => Value::String(REDACTED.into()),
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}

/// Every URL password in `text` (one URL or a list: `a=redis://:pw@h:1,redis://h2`)
/// replaced by `***`, and every `password=` query parameter's value too.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends where a path, query, fragment, or the next list item starts.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | ',' | ';') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at_sign) => {
                let userinfo = &authority[..at_sign];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon + 1]);
                        out.push_str(REDACTED);
                    }
                    // A user name alone (`postgres://reader@host`): no secret in it.
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at_sign..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    redact_password_params(&out)
}

/// `?password=x&…` → `?password=***&…` (libpq reads a password from the query too).
fn redact_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_param(rest) {
        let start = i + "password=".len();
        out.push_str(&rest[..start]);
        out.push_str(REDACTED);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| matches!(c, '&' | '#' | ',' | ';') || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Where a `password=` parameter starts (after `?` or `&`).
fn find_param(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("password=") {
        let i = from + i;
        if i > 0 && matches!(text.as_bytes()[i - 1], b'?' | b'&') {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_wherever_they_are() {
        for (given, shown) in [
            (
                "postgres://u:pw@h:5432/db?sslmode=require",
                "postgres://u:***@h:5432/db?sslmode=require",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("redis://:pw@h:6379", "redis://:***@h:6379"),
            ("redis://reader@h:6379", "redis://reader@h:6379"),
            (
                "a=redis://:p1@h1:1,redis://h2:2;b=rediss://u:p2@h3:3/0",
                "a=redis://:***@h1:1,redis://h2:2;b=rediss://u:***@h3:3/0",
            ),
            ("postgres://u:p@w@h/db", "postgres://u:***@h/db"),
            (
                "postgres://h/db?user=u&password=pw&sslmode=disable",
                "postgres://h/db?user=u&password=***&sslmode=disable",
            ),
            (
                "postgres://h/db?password=pw",
                "postgres://h/db?password=***",
            ),
            ("no url here", "no url here"),
            ("", ""),
            ("http://collector:4318", "http://collector:4318"),
        ] {
            assert_eq!(redact_urls(given), shown, "{given}");
        }
    }

    #[test]
    fn keys_named_as_secrets_are_hidden_whole() {
        let v = |s: &str| toml::Value::String(s.into());
        assert_eq!(redact_value("otel.headers", &v("authorization=x")), "***");
        assert_eq!(redact_value("x.api_token", &v("abc")), "***");
        assert_eq!(redact_value("x.password", &v("")), "", "empty stays empty");
        assert_eq!(redact_value("l1.ttl", &v("60s")), "60s");
        assert_eq!(
            redact_value("l1.capacity", &toml::Value::Integer(5)),
            serde_json::json!(5)
        );
    }
}
