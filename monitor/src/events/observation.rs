//! The `Observation`: one attributed activity (exec, secret open, connect, API call) as metadata, the unit detectors judge and `record`/`replay` store.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::identity::WorkloadIdentity;

// Deserialised by hand (`de` below): with `#[serde(flatten)]` on the internally tagged
// `activity`, serde's derive buffers every line into a tree of owned values before it reads a
// field, which cost more than judging the observation. The wire form stays the same.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// The flat wire form of an `Observation` (its own fields, `kind`, then the activity's fields)
/// read in one pass, field by field, without buffering the line; and [`Decoder`], which also
/// shares one `Arc<WorkloadIdentity>` between the lines that name the same identity.
mod de {
    use std::{borrow::Cow, collections::BTreeMap, fmt, net::SocketAddr, sync::Arc};

    use serde::{
        de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor},
        Deserialize, Deserializer,
    };

    use super::{rfc3339_ns, Activity, ApiCallSeen, CredentialSeen, Observation};
    use crate::identity::{IdentityKind, WorkloadIdentity};

    impl<'de> Deserialize<'de> for Observation {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(ObservationVisitor { identities: None })
        }
    }

    /// Reads recorded observations (`nhiwatch replay`). Lines of one identity share one
    /// `Arc<WorkloadIdentity>`: the identity is read without copying its strings and compared
    /// with the one shared, so the engine sees the same pointer again and compares nothing.
    #[derive(Default)]
    pub struct Decoder {
        identities: hashbrown::HashMap<Box<str>, Arc<WorkloadIdentity>, rustc_hash::FxBuildHasher>,
    }

    /// Identities shared at once; beyond it the table starts over (lines still decode the same).
    const SHARED_IDENTITIES: usize = 1 << 16;

    impl Decoder {
        /// One JSON line (no trailing characters but whitespace), as `serde_json::from_slice`.
        pub fn decode(&mut self, line: &[u8]) -> serde_json::Result<Observation> {
            let mut de = serde_json::Deserializer::from_slice(line);
            let o = de.deserialize_map(ObservationVisitor {
                identities: Some(self),
            })?;
            de.end()?;
            Ok(o)
        }

        fn share(&mut self, v: IdentityView<'_>) -> Arc<WorkloadIdentity> {
            if let Some(a) = self.identities.get(&*v.id.0) {
                if v.is(a) {
                    return a.clone();
                }
            }
            let a = Arc::new(v.owned());
            if self.identities.len() >= SHARED_IDENTITIES {
                self.identities.clear();
            }
            self.identities.insert(a.id.as_str().into(), a.clone());
            a
        }
    }

    /// A string borrowed from the line where it has no escapes.
    struct Text<'a>(Cow<'a, str>);

    impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Text<'a>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'a>, E> {
                    Ok(Text(Cow::Borrowed(s)))
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'a>, E> {
                    Ok(Text(Cow::Owned(s.to_owned())))
                }
                fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'a>, E> {
                    Ok(Text(Cow::Owned(s)))
                }
            }
            d.deserialize_str(V(std::marker::PhantomData))
        }
    }

    /// `WorkloadIdentity` as the line holds it, fields in the same order and with the same rules.
    #[derive(Deserialize)]
    struct IdentityView<'a> {
        #[serde(borrow)]
        id: Text<'a>,
        kind: IdentityKind,
        #[serde(borrow)]
        namespace: Option<Text<'a>>,
        #[serde(borrow)]
        service_account: Option<Text<'a>>,
        #[serde(borrow)]
        pod: Option<Text<'a>>,
        #[serde(borrow)]
        pod_uid: Option<Text<'a>>,
        #[serde(borrow)]
        container: Option<Text<'a>>,
        #[serde(borrow)]
        container_id: Option<Text<'a>>,
        #[serde(borrow)]
        image: Option<Text<'a>>,
        #[serde(borrow)]
        owner: Option<Text<'a>>,
        #[serde(borrow)]
        unit: Option<Text<'a>>,
        uid: Option<u32>,
        #[serde(borrow)]
        user: Option<Text<'a>>,
        #[serde(borrow)]
        exe: Option<Text<'a>>,
        #[serde(borrow)]
        node: Text<'a>,
    }

    impl IdentityView<'_> {
        fn is(&self, w: &WorkloadIdentity) -> bool {
            let same = |a: &Option<Text<'_>>, b: &Option<String>| {
                a.as_ref().map(|t| &*t.0) == b.as_deref()
            };
            *self.id.0 == w.id
                && self.kind == w.kind
                && *self.node.0 == w.node
                && self.uid == w.uid
                && same(&self.namespace, &w.namespace)
                && same(&self.service_account, &w.service_account)
                && same(&self.pod, &w.pod)
                && same(&self.pod_uid, &w.pod_uid)
                && same(&self.container, &w.container)
                && same(&self.container_id, &w.container_id)
                && same(&self.image, &w.image)
                && same(&self.owner, &w.owner)
                && same(&self.unit, &w.unit)
                && same(&self.user, &w.user)
                && same(&self.exe, &w.exe)
        }

        fn owned(self) -> WorkloadIdentity {
            let s = |t: Option<Text<'_>>| t.map(|t| t.0.into_owned());
            WorkloadIdentity {
                id: self.id.0.into_owned(),
                kind: self.kind,
                namespace: s(self.namespace),
                service_account: s(self.service_account),
                pod: s(self.pod),
                pod_uid: s(self.pod_uid),
                container: s(self.container),
                container_id: s(self.container_id),
                image: s(self.image),
                owner: s(self.owner),
                unit: s(self.unit),
                uid: self.uid,
                user: s(self.user),
                exe: s(self.exe),
                node: self.node.0.into_owned(),
            }
        }
    }

    struct SharedIdentity<'i>(&'i mut Decoder);

    impl<'de> DeserializeSeed<'de> for SharedIdentity<'_> {
        type Value = Arc<WorkloadIdentity>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let v = IdentityView::deserialize(d)?;
            Ok(self.0.share(v))
        }
    }

    /// `time`: RFC 3339 text, read without copying it.
    struct Time(i64);

    impl<'de> Deserialize<'de> for Time {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            // Judged once the string is read, so errors point where they did (after the value).
            let t = Text::deserialize(d)?;
            rfc3339_ns::parse(&t.0).map(Time).map_err(de::Error::custom)
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Exec,
        FileOpen,
        Connect,
        ApiCall,
    }

    /// Every key an observation's line may hold; others are skipped, as the derive did.
    #[derive(Clone, Copy)]
    enum Field {
        Time,
        Identity,
        Labels,
        Pid,
        Exe,
        Kind,
        Path,
        Result,
        Address,
        Name,
        Host,
        Method,
        Status,
        RequestBytes,
        ResponseBytes,
        Credentials,
        Other,
    }

    impl Field {
        fn name(self) -> &'static str {
            match self {
                Field::Time => "time",
                Field::Identity => "identity",
                Field::Labels => "labels",
                Field::Pid => "pid",
                Field::Exe => "exe",
                Field::Kind => "kind",
                Field::Path => "path",
                Field::Result => "result",
                Field::Address => "address",
                Field::Name => "name",
                Field::Host => "host",
                Field::Method => "method",
                Field::Status => "status",
                Field::RequestBytes => "request_bytes",
                Field::ResponseBytes => "response_bytes",
                Field::Credentials => "credentials",
                Field::Other => "",
            }
        }

        /// Whether the field belongs to activities of `kind` (the others' fields are skipped).
        fn of(self, kind: Kind) -> bool {
            match self {
                Field::Path => matches!(kind, Kind::FileOpen | Kind::ApiCall),
                Field::Result => kind == Kind::FileOpen,
                Field::Address | Field::Name => kind == Kind::Connect,
                Field::Host
                | Field::Method
                | Field::Status
                | Field::RequestBytes
                | Field::ResponseBytes
                | Field::Credentials => kind == Kind::ApiCall,
                _ => true,
            }
        }
    }

    impl<'de> Deserialize<'de> for Field {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Field;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Field, E> {
                    Ok(match s {
                        "time" => Field::Time,
                        "identity" => Field::Identity,
                        "labels" => Field::Labels,
                        "pid" => Field::Pid,
                        "exe" => Field::Exe,
                        "kind" => Field::Kind,
                        "path" => Field::Path,
                        "result" => Field::Result,
                        "address" => Field::Address,
                        "name" => Field::Name,
                        "host" => Field::Host,
                        "method" => Field::Method,
                        "status" => Field::Status,
                        "request_bytes" => Field::RequestBytes,
                        "response_bytes" => Field::ResponseBytes,
                        "credentials" => Field::Credentials,
                        _ => Field::Other,
                    })
                }
            }
            d.deserialize_identifier(V)
        }
    }

    struct ObservationVisitor<'i> {
        identities: Option<&'i mut Decoder>,
    }

    /// Sets `slot` once: a key given twice is an error, as with the derive.
    fn once<T, E: de::Error>(slot: &mut Option<T>, f: Field, v: T) -> Result<(), E> {
        if slot.is_some() {
            return Err(E::duplicate_field(f.name()));
        }
        *slot = Some(v);
        Ok(())
    }

    impl<'de> Visitor<'de> for ObservationVisitor<'_> {
        type Value = Observation;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an observation")
        }

        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Observation, A::Error> {
            let mut time = None;
            let mut identity = None;
            let mut labels: Option<Option<Arc<BTreeMap<String, String>>>> = None;
            let mut pid = None;
            let mut exe: Option<Option<Arc<str>>> = None;
            let mut kind: Option<Kind> = None;
            let mut path: Option<String> = None;
            let mut result: Option<i64> = None;
            let mut address: Option<SocketAddr> = None;
            let mut name: Option<Option<String>> = None;
            let mut host: Option<Option<String>> = None;
            let mut method: Option<Option<String>> = None;
            let mut status: Option<Option<u16>> = None;
            let mut request_bytes: Option<u64> = None;
            let mut response_bytes: Option<u64> = None;
            let mut credentials: Option<Vec<CredentialSeen>> = None;
            while let Some(f) = map.next_key::<Field>()? {
                // Once the kind is known, another activity's fields are skipped unread.
                if kind.is_some_and(|k| !f.of(k)) {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                match f {
                    Field::Time => once(&mut time, f, map.next_value::<Time>()?.0)?,
                    Field::Identity => {
                        let v = match self.identities.as_deref_mut() {
                            Some(d) => map.next_value_seed(SharedIdentity(d))?,
                            None => map.next_value()?,
                        };
                        once(&mut identity, f, v)?;
                    }
                    Field::Labels => once(&mut labels, f, map.next_value()?)?,
                    Field::Pid => once(&mut pid, f, map.next_value()?)?,
                    Field::Exe => once(&mut exe, f, map.next_value()?)?,
                    Field::Kind => once(&mut kind, f, map.next_value()?)?,
                    Field::Path => once(&mut path, f, map.next_value()?)?,
                    Field::Result => once(&mut result, f, map.next_value()?)?,
                    Field::Address => once(&mut address, f, map.next_value()?)?,
                    Field::Name => once(&mut name, f, map.next_value()?)?,
                    Field::Host => once(&mut host, f, map.next_value()?)?,
                    Field::Method => once(&mut method, f, map.next_value()?)?,
                    Field::Status => once(&mut status, f, map.next_value()?)?,
                    Field::RequestBytes => once(&mut request_bytes, f, map.next_value()?)?,
                    Field::ResponseBytes => once(&mut response_bytes, f, map.next_value()?)?,
                    Field::Credentials => once(&mut credentials, f, map.next_value()?)?,
                    Field::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let missing = |f: &'static str| <A::Error as de::Error>::missing_field(f);
            let activity = match kind.ok_or_else(|| missing("kind"))? {
                Kind::Exec => Activity::Exec,
                Kind::FileOpen => Activity::FileOpen {
                    path: path.ok_or_else(|| missing("path"))?,
                    result: result.ok_or_else(|| missing("result"))?,
                },
                Kind::Connect => Activity::Connect {
                    address: address.ok_or_else(|| missing("address"))?,
                    name: name.flatten(),
                },
                Kind::ApiCall => Activity::ApiCall(ApiCallSeen {
                    host: host.flatten(),
                    method: method.flatten(),
                    path: path.unwrap_or_default(),
                    status: status.flatten(),
                    request_bytes: request_bytes.unwrap_or(0),
                    response_bytes: response_bytes.unwrap_or(0),
                    credentials: credentials.unwrap_or_default(),
                }),
            };
            Ok(Observation {
                time: time.ok_or_else(|| missing("time"))?,
                identity: identity.ok_or_else(|| missing("identity"))?,
                labels: labels.flatten(),
                pid: pid.ok_or_else(|| missing("pid"))?,
                exe: exe.flatten(),
                activity,
            })
        }
    }
}

pub use de::Decoder;

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

    /// The hand-written reader takes what the derived one took (`Activity` is still derived, so
    /// the old wire form is at hand to compare with) and says no where it said no.
    #[test]
    fn reader_matches_the_wire_form_and_shares_identities() {
        #[derive(Deserialize)]
        struct Old {
            #[serde(with = "rfc3339_ns")]
            time: i64,
            identity: Arc<WorkloadIdentity>,
            #[serde(default)]
            labels: Option<Arc<BTreeMap<String, String>>>,
            pid: u32,
            #[serde(default)]
            exe: Option<Arc<str>>,
            #[serde(flatten)]
            activity: Activity,
        }
        let id = r#"{"id":"spiffe://c/ns/a/sa/b","kind":"kubernetes","namespace":"a","service_account":"b","pod":"p\u00e9","node":"n1"}"#;
        let lines = [
            format!(
                r#"{{"time":"2026-11-23T10:00:00.000000001Z","identity":{id},"pid":7,"exe":"/app/x","kind":"api_call","host":"h.example","method":"GET","path":"/R4/{{id}}","status":200,"request_bytes":10,"response_bytes":20,"credentials":[{{"kind":"jwt","fingerprint":"hmac-sha256:00","jwt":{{"exp":5,"aud":["a"],"scope":["s"]}}}}]}}"#
            ),
            // The activity's fields before its kind, nulls for options, keys unknown to us.
            format!(
                r#"{{"path":"/var/run/x","result":-13,"identity":{id},"kind":"file_open","pid":1,"time":"2026-11-23T10:00:01Z","extra":{{"a":[1]}},"labels":{{"app":"x"}}}}"#
            ),
            format!(
                r#"{{"time":"2026-11-23T10:00:02Z","identity":{id},"pid":1,"exe":null,"kind":"connect","address":"10.0.0.1:443","name":null}}"#
            ),
            // Another activity's fields after the kind are skipped, whatever their type.
            format!(
                r#"{{"time":"2026-11-23T10:00:03Z","identity":{id},"pid":1,"kind":"exec","path":5,"host":[]}}"#
            ),
            format!(
                r#"{{"time":"2026-11-23T10:00:04Z","identity":{id},"pid":1,"kind":"api_call"}}"#
            ),
        ];
        let mut d = Decoder::default();
        let mut ids = Vec::new();
        for l in &lines {
            let old: Old = serde_json::from_str(l).unwrap();
            let new: Observation = serde_json::from_str(l).unwrap();
            let shared = d.decode(l.as_bytes()).unwrap();
            assert_eq!(new, shared, "{l}");
            let o = &new;
            assert_eq!(
                (o.time, &o.identity, &o.labels, o.pid, &o.exe, &o.activity),
                (
                    old.time,
                    &old.identity,
                    &old.labels,
                    old.pid,
                    &old.exe,
                    &old.activity
                ),
                "{l}"
            );
            ids.push(shared.identity);
        }
        assert!(
            ids.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])),
            "one identity, one Arc"
        );
        assert_eq!(ids[0].pod.as_deref(), Some("pé"), "escapes are read");
        // A changed attribute is a new identity object; the id alone does not decide.
        let moved = lines[0].replace(r#""node":"n1""#, r#""node":"n2""#);
        let o = d.decode(moved.as_bytes()).unwrap();
        assert!(!Arc::ptr_eq(&o.identity, &ids[0]));
        assert_eq!(o.identity.node, "n2");
        // What the derived reader refused, this one refuses, with the same words where serde's
        // own (replay prints them without the values).
        for (bad, want) in [
            (
                lines[0].replace(r#""pid":7,"#, ""),
                Some("missing field `pid`"),
            ),
            (lines[0].replace(r#""kind":"api_call","#, ""), None),
            (
                lines[0].replace("api_call", "telepathy"),
                Some("unknown variant `telepathy`"),
            ),
            (
                lines[1].replace(r#""result":-13,"#, ""),
                Some("missing field `result`"),
            ),
            (
                lines[2].replace(r#""address":"10.0.0.1:443","#, ""),
                Some("missing field `address`"),
            ),
            (
                lines[0].replace(r#""status":200"#, r#""status":"ok""#),
                Some("invalid type"),
            ),
            (
                lines[0].replace(r#""pid":7"#, r#""pid":7,"pid":8"#),
                Some("duplicate field `pid`"),
            ),
            (
                lines[0].replace(r#""kind":"kubernetes""#, r#""kind":"robot""#),
                Some("unknown variant `robot`"),
            ),
            (format!("{} x", lines[0]), Some("trailing characters")),
        ] {
            assert!(serde_json::from_str::<Old>(&bad).is_err(), "{bad}");
            for e in [
                serde_json::from_str::<Observation>(&bad).unwrap_err(),
                d.decode(bad.as_bytes()).unwrap_err(),
            ] {
                if let Some(w) = want {
                    assert!(e.to_string().contains(w), "{e} for {bad}");
                }
            }
        }
    }
}
