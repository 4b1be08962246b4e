//! HTTPS webhook sink: takes batches of alerts, gives one POST per batch — a JSON array, or Splunk HEC events — over rustls with an optional custom CA and client certificate; the token comes from a file and never appears in errors.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::tls::TlsClientConfig;
use super::SinkError;
use crate::alerts::Outgoing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Body {
    /// `[alert, alert, …]` as `application/json`.
    #[default]
    Json,
    /// Splunk HTTP Event Collector: `{"time","host","source","sourcetype","event"}` objects concatenated.
    Hec,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// For HEC, the event endpoint (…/services/collector/event).
    pub url: String,
    #[serde(default)]
    pub body: Body,
    /// HEC: `Authorization: Splunk <token>` (required); json: `Authorization: Bearer <token>` if set.
    /// Read at start and again after a 401/403, so a rotated token is picked up.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsClientConfig>,
    /// HEC metadata.
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// An `http://` url sends the token and every alert in clear; it is refused unless this says
    /// so (a relay on the same host or in the same pod).
    #[serde(default)]
    pub allow_insecure_http: bool,
}

impl WebhookConfig {
    /// What can be told without the network. Messages name the key as it stands under the sink.
    pub fn validate(&self) -> Result<(), String> {
        // The value itself is not echoed when it does not parse: it may hold a password.
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        let shown = shown_url(&url);
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allow_insecure_http => Ok(()),
            "http" => Err(format!(
                "url {:?} is http://: the {} and every alert would cross the network in clear; \
                 use https://, or set allow_insecure_http: true for a relay on this host",
                shown,
                if self.body == Body::Hec {
                    "HEC token"
                } else {
                    "token"
                }
            )),
            _ => Err(format!("url {:?}: must be https://HOST[:PORT]/PATH", shown)),
        }
    }
}

/// A URL as error messages may show it: a password or user in it, and its query, could be
/// credentials (`https://user:pass@host/`, `?token=…`); they are replaced by `…`.
fn shown_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let had_user = !u.username().is_empty() || u.password().is_some();
    let _ = u.set_password(None);
    let _ = u.set_username(if had_user { "…" } else { "" });
    if u.query().is_some() {
        u.set_query(Some("…"));
    }
    u.to_string()
}

pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    health: Option<reqwest::Url>,
    body: Body,
    token_file: Option<PathBuf>,
    token: Option<String>,
    host: String,
    index: Option<String>,
    sourcetype: String,
}

fn read_token(path: &std::path::Path) -> Result<String, SinkError> {
    // Bounded and never blocking (a FIFO would hang the start); the error names the file and
    // the limit, never the contents.
    let t = crate::input::read_text(path, crate::input::MAX_TOKEN_BYTES, "a token file")
        .map_err(|e| SinkError::Config(format!("token_file {e}")))?;
    let t = t.trim().to_owned();
    // The token goes into a header: reject what would be invalid there, without echoing it.
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SinkError::Config(format!(
            "token_file {}: empty, or not one printable ASCII word",
            path.display()
        )));
    }
    Ok(t)
}

impl WebhookSink {
    pub fn new(
        cfg: &WebhookConfig,
        hostname: &str,
        timeout: Duration,
    ) -> Result<WebhookSink, SinkError> {
        let url =
            reqwest::Url::parse(&cfg.url).map_err(|e| SinkError::Config(format!("url: {e}")))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(SinkError::Config(format!(
                "url {:?}: must be https://HOST[:PORT]/PATH (http:// only for a local relay)",
                shown_url(&url)
            )));
        }
        cfg.validate().map_err(SinkError::Config)?;
        let token = cfg.token_file.as_deref().map(read_token).transpose()?;
        if cfg.body == Body::Hec && token.is_none() {
            return Err(SinkError::Config(
                "body hec needs token_file (the HEC token)".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nhiwatch/", env!("CARGO_PKG_VERSION")));
        if url.scheme() == "https" {
            let tls = cfg.tls.clone().unwrap_or_default();
            if tls.server_name.is_some() {
                return Err(SinkError::Config(
                    "tls.server_name is not supported for webhooks: the URL's host is verified"
                        .into(),
                ));
            }
            let mut rustls = (*tls.rustls()?).clone();
            rustls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            builder = builder.use_preconfigured_tls(rustls);
        } else if cfg.tls.is_some() {
            return Err(SinkError::Config(
                "tls is set but the url is http://".into(),
            ));
        }
        let client = builder
            .build()
            .map_err(|e| SinkError::Config(format!("HTTP client: {e}")))?;
        let health = (cfg.body == Body::Hec)
            .then(|| url.join("/services/collector/health").ok())
            .flatten();
        Ok(WebhookSink {
            client,
            url,
            health,
            body: cfg.body,
            token_file: cfg.token_file.clone(),
            token,
            host: hostname.to_owned(),
            index: cfg.index.clone(),
            sourcetype: cfg
                .sourcetype
                .clone()
                .unwrap_or_else(|| "nhiwatch:alert".into()),
        })
    }

    fn payload(&self, batch: &[Outgoing]) -> Vec<u8> {
        let mut out = Vec::with_capacity(batch.iter().map(|o| o.body.len() + 160).sum());
        match self.body {
            Body::Json => {
                out.push(b'[');
                for (i, o) in batch.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(o.body.as_bytes());
                }
                out.push(b']');
            }
            Body::Hec => {
                for o in batch {
                    let meta = serde_json::json!({
                        "time": format!("{}.{:03}", o.time_ns.div_euclid(1_000_000_000), o.time_ns.rem_euclid(1_000_000_000) / 1_000_000),
                        "host": self.host,
                        "source": "nhiwatch",
                        "sourcetype": self.sourcetype,
                    });
                    let mut meta = serde_json::to_vec(&meta).unwrap_or_default();
                    if let Some(index) = &self.index {
                        meta.pop();
                        meta.extend_from_slice(b",\"index\":");
                        meta.extend_from_slice(&serde_json::to_vec(index).unwrap_or_default());
                        meta.push(b'}');
                    }
                    // The body is already JSON: splice it in rather than parse and re-encode it.
                    meta.pop();
                    out.extend_from_slice(&meta);
                    out.extend_from_slice(b",\"event\":");
                    out.extend_from_slice(o.body.as_bytes());
                    out.push(b'}');
                    out.push(b'\n');
                }
            }
        }
        out
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.token, self.body) {
            (Some(t), Body::Hec) => req.header("authorization", format!("Splunk {t}")),
            (Some(t), Body::Json) => req.bearer_auth(t),
            (None, _) => req,
        }
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        let req = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .body(self.payload(batch));
        let resp = self.authorize(req).send().await.map_err(|e| {
            // reqwest's errors name the URL (never headers), which holds no secret.
            SinkError::Transient(format!("POST {}: {}", self.url, error_chain(&e)))
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        // Only the receiver's status and a short, printable prefix of its answer are kept.
        let text: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let msg = format!("POST {}: HTTP {status}: {text}", self.url);
        match status.as_u16() {
            401 | 403 => {
                if let Some(p) = &self.token_file {
                    if let Ok(t) = read_token(p) {
                        self.token = Some(t);
                    }
                }
                Err(SinkError::Transient(msg))
            }
            // Malformed for this receiver: retrying the same batch cannot help.
            400 | 422 => Err(SinkError::Rejected(msg)),
            413 => Err(SinkError::TooLarge(msg)),
            _ => Err(SinkError::Transient(msg)),
        }
    }

    pub async fn check(&mut self) -> Result<(), SinkError> {
        let Some(h) = self.health.clone() else {
            return Ok(());
        };
        let resp = self
            .client
            .get(h.clone())
            .send()
            .await
            .map_err(|e| SinkError::Transient(format!("GET {h}: {}", error_chain(&e))))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SinkError::Transient(format!(
                "GET {h}: HTTP {}",
                resp.status()
            )))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::finding::Severity;

    fn sink(body: Body, index: Option<&str>) -> WebhookSink {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("t");
        std::fs::write(&tok, "abc-123\n").unwrap();
        WebhookSink::new(
            &WebhookConfig {
                url: "http://127.0.0.1:9/services/collector/event".into(),
                body,
                token_file: Some(tok),
                tls: None,
                index: index.map(str::to_owned),
                sourcetype: None,
                allow_insecure_http: true,
            },
            "node-1",
            Duration::from_secs(1),
        )
        .unwrap()
    }

    fn alert(i: i64) -> Outgoing {
        Outgoing {
            time_ns: 1_700_000_000_123_456_789 + i,
            fresh: true,
            severity: Severity::High,
            rule: "NHI-010".into(),
            dedup_key: "k".into(),
            body: format!("{{\"n\":{i}}}"),
        }
    }

    #[test]
    fn hec_events_concatenate_and_carry_metadata() {
        let s = sink(Body::Hec, Some("sec"));
        let p = String::from_utf8(s.payload(&[alert(0), alert(1)])).unwrap();
        let events: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&p)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["time"], "1700000000.123");
        assert_eq!(events[0]["host"], "node-1");
        assert_eq!(events[0]["index"], "sec");
        assert_eq!(events[1]["event"]["n"], 1);
        assert!(!p.contains("abc-123"), "the token stays in the header");
    }

    #[test]
    fn json_is_an_array() {
        let s = sink(Body::Json, None);
        let v: serde_json::Value =
            serde_json::from_slice(&s.payload(&[alert(0), alert(1)])).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_refused_url_is_shown_without_its_password_or_query() {
        let cfg = |url: &str| WebhookConfig {
            url: url.into(),
            body: Body::Hec,
            token_file: None,
            tls: None,
            index: None,
            sourcetype: None,
            allow_insecure_http: false,
        };
        for url in [
            "http://splunk:hunter2pw@siem.example:8088/services/collector?token=qsecret42",
            "ftp://splunk:hunter2pw@siem.example/x?token=qsecret42",
            "not a url hunter2pw",
        ] {
            let e = cfg(url).validate().unwrap_err();
            assert!(
                !e.contains("hunter2pw") && !e.contains("qsecret42") && !e.contains("splunk:"),
                "{e}"
            );
            assert!(e.starts_with("url"), "{e}");
        }
        let e = cfg("http://siem.example:8088/services/collector")
            .validate()
            .unwrap_err();
        assert!(e.contains("siem.example:8088/services/collector"), "{e}");
    }

    #[test]
    fn bad_settings_are_config_errors_that_do_not_echo_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let tok = dir.path().join("t");
        std::fs::write(&tok, "secret value with spaces").unwrap();
        let cfg = WebhookConfig {
            url: "https://h/x".into(),
            body: Body::Hec,
            token_file: Some(tok),
            tls: None,
            index: None,
            sourcetype: None,
            allow_insecure_http: false,
        };
        let e = WebhookSink::new(&cfg, "n", Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("token_file") && !e.contains("secret"), "{e}");
        let e = WebhookSink::new(
            &WebhookConfig {
                token_file: None,
                ..cfg.clone()
            },
            "n",
            Duration::from_secs(1),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("needs token_file"), "{e}");
        let e = WebhookSink::new(
            &WebhookConfig {
                url: "ftp://h/".into(),
                body: Body::Json,
                token_file: None,
                ..cfg
            },
            "n",
            Duration::from_secs(1),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn http_is_refused_unless_allowed_explicitly() {
        let cfg = WebhookConfig {
            url: "http://siem.example:8088/services/collector/event".into(),
            body: Body::Hec,
            token_file: None,
            tls: None,
            index: None,
            sourcetype: None,
            allow_insecure_http: false,
        };
        let e = cfg.validate().unwrap_err();
        assert!(
            e.contains("http://") && e.contains("HEC token") && e.contains("in clear"),
            "{e}"
        );
        assert!(e.contains("allow_insecure_http"), "{e}");
        let allowed = WebhookConfig {
            allow_insecure_http: true,
            ..cfg.clone()
        };
        assert_eq!(allowed.validate(), Ok(()));
        let https = WebhookConfig {
            url: "https://siem.example/services/collector/event".into(),
            ..cfg
        };
        assert_eq!(https.validate(), Ok(()));
    }

    /// A token or CA file that is a FIFO used to block the daemon's start in `open`.
    #[test]
    fn token_and_ca_files_that_are_fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("token");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let cfg = WebhookConfig {
            url: "https://h/x".into(),
            body: Body::Hec,
            token_file: Some(fifo.clone()),
            tls: None,
            index: None,
            sourcetype: None,
            allow_insecure_http: false,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let token = WebhookSink::new(&cfg, "n", Duration::from_secs(1))
                .err()
                .map(|e| e.to_string());
            let ca = crate::alerts::sinks::tls::TlsClientConfig {
                ca: Some(fifo),
                ..Default::default()
            }
            .rustls()
            .err()
            .map(|e| e.to_string());
            let _ = tx.send((token, ca));
        });
        let (token, ca) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("blocked opening a FIFO");
        let token = token.expect("a FIFO token file is an error");
        assert!(
            token.contains("token_file") && token.contains("not a regular file (a FIFO)"),
            "{token}"
        );
        let ca = ca.expect("a FIFO CA file is an error");
        assert!(ca.contains("not a regular file (a FIFO)"), "{ca}");
    }
}
