//! The `Observation`: one attributed activity (exec, secret open, connect, API call) as metadata, the unit detectors judge and `record`/`replay` store.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::identity::WorkloadIdentity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Wall-clock time, nanoseconds since the Unix epoch (RFC 3339 in JSON).
    #[serde(with = "rfc3339_ns")]
    pub time: i64,
    pub identity: Arc<WorkloadIdentity>,
    /// Pod labels, for contracts that select by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Arc<BTreeMap<String, String>>>,
    pub pid: u32,
    /// The acting process's executable, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<Arc<str>>,
    #[serde(flatten)]
    pub activity: Activity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activity {
    /// A process of the identity started.
    Exec,
    /// A watched secret location was opened (`result` < 0: the open failed with −errno).
    FileOpen {
        path: String,
        result: i64,
    },
    /// An outbound TCP connection was established.
    Connect {
        address: SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    ApiCall(ApiCallSeen),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiCallSeen {
    /// Lowercase host without port: Host/:authority, else SNI, DNS name or peer IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Templated path (`/R4/Patient/{id}`); empty when the request head was lost.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default)]
    pub request_bytes: u64,
    #[serde(default)]
    pub response_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialSeen>,
}

/// A credential reduced to what detectors need; never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSeen {
    /// jwt | bearer | basic | api_key | aws_sigv4
    pub kind: String,
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_lived: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSeen>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSeen {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Audiences (`aud`), at most `MAX_AUD`; empty when the token names none. Added after the
    /// first recordings: older ones replay with none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<String>,
    /// Granted scopes (`scope` split at spaces, or `scp`), at most `MAX_SCOPES`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Scopes were left out at the caps: the list is not the whole grant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scope_truncated: bool,
}

impl CredentialSeen {
    pub fn from_summary(c: &crate::protocol::credentials::CredentialSummary) -> CredentialSeen {
        CredentialSeen {
            kind: c.kind.name().to_owned(),
            fingerprint: c.fingerprint.clone(),
            vendor: c.vendor.map(str::to_owned),
            token_type: c.token_type.map(str::to_owned),
            long_lived: c.long_lived,
            access_key_id: c.access_key_id.clone(),
            username: c.username.clone(),
            jwt: c.jwt.as_ref().map(|j| JwtSeen {
                iss: j.iss.clone(),
                sub: j.sub.clone(),
                exp: j.exp,
                iat: j.iat,
                jti: j.jti.clone(),
                ttl_seconds: j.ttl_seconds,
                aud: j.aud.clone(),
                scope: j.scope.clone(),
                scope_truncated: j.scope_truncated,
            }),
        }
    }
}

impl Observation {
    pub fn kind(&self) -> &'static str {
        match self.activity {
            Activity::Exec => "exec",
            Activity::FileOpen { .. } => "file_open",
            Activity::Connect { .. } => "connect",
            Activity::ApiCall(_) => "api_call",
        }
    }
}

/// Formats and parses Unix-epoch nanoseconds as RFC 3339 UTC with nanoseconds.
pub mod rfc3339_ns {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(ns: i64) -> String {
        let t = UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
        humantime::format_rfc3339_nanos(t).to_string()
    }

    pub fn parse(s: &str) -> Result<i64, String> {
        let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("bad time {s:?}: {e}"))?;
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| format!("time {s:?} is before 1970"))?;
        i64::try_from(d.as_nanos()).map_err(|_| format!("time {s:?} out of range"))
    }

    pub fn to_system(ns: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
    }

    pub fn serialize<S: Serializer>(ns: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*ns))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_shape() {
        let line = r#"{"time":"2026-11-23T10:00:00.000000001Z","identity":{"id":"spiffe://clinic.example/ns/a/sa/b","kind":"kubernetes","namespace":"a","service_account":"b","node":"n1"},"pid":7,"exe":"/app/x","kind":"api_call","host":"fhir.example.org","method":"GET","path":"/R4/Patient/{id}","status":200,"request_bytes":10,"response_bytes":20,"credentials":[{"kind":"jwt","fingerprint":"hmac-sha256:00","jwt":{"exp":5,"ttl_seconds":60}}]}"#;
        let o: Observation = serde_json::from_str(line).unwrap();
        assert_eq!(o.time % 1_000_000_000, 1);
        assert_eq!(o.kind(), "api_call");
        let Activity::ApiCall(c) = &o.activity else {
            panic!("{o:?}")
        };
        assert_eq!(c.credentials[0].jwt.as_ref().unwrap().ttl_seconds, Some(60));
        // A recording made before audiences and scopes were kept replays with none.
        assert!(c.credentials[0].jwt.as_ref().unwrap().aud.is_empty());
        let with = line.replace(
            r#""ttl_seconds":60"#,
            r#""ttl_seconds":60,"aud":["https://fhir.example.org/R4"],"scope":["patient/*.read"]"#,
        );
        let o2: Observation = serde_json::from_str(&with).unwrap();
        let Activity::ApiCall(c2) = &o2.activity else {
            panic!("{o2:?}")
        };
        let j = c2.credentials[0].jwt.as_ref().unwrap();
        assert_eq!(
            (j.aud.len(), j.scope.as_slice()),
            (1, &["patient/*.read".to_string()][..])
        );
        assert_eq!(serde_json::to_string(&o2).unwrap(), with);
        let back: Observation = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
        let exec = r#"{"time":"2026-11-23T10:00:00Z","identity":{"id":"spiffe://x/y","kind":"unix","node":"n"},"pid":1,"kind":"exec"}"#;
        let o: Observation = serde_json::from_str(exec).unwrap();
        assert_eq!(o.activity, Activity::Exec);
        assert!(serde_json::from_str::<Observation>(&exec.replace("10:00:00Z", "soon")).is_err());
    }
}
