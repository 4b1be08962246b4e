//! SPIRE-style selectors (`k8s:ns:x`, `systemd:unit:y`, `unix:uid:0` …) that name or override identities.

use std::collections::BTreeMap;

use super::WorkloadIdentity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    K8sNamespace(String),
    K8sServiceAccount(String),
    K8sPodName(String),
    K8sPodLabel(String, String),
    K8sContainerName(String),
    K8sImage(String),
    SystemdUnit(String),
    UnixUid(u32),
    UnixUser(String),
    UnixPath(String),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected TYPE:KEY:VALUE"))?;
        let (key, value) = rest
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected TYPE:KEY:VALUE"))?;
        if value.is_empty() {
            return Err(format!("{s:?}: empty value"));
        }
        let v = value.to_owned();
        Ok(match (kind, key) {
            ("k8s", "ns") => Selector::K8sNamespace(v),
            ("k8s", "sa") => Selector::K8sServiceAccount(v),
            ("k8s", "pod-name") => Selector::K8sPodName(v),
            ("k8s", "pod-label") => {
                let (k, val) = value.split_once(':').ok_or_else(|| format!("{s:?}: expected k8s:pod-label:KEY:VALUE"))?;
                Selector::K8sPodLabel(k.to_owned(), val.to_owned())
            }
            ("k8s", "container-name") => Selector::K8sContainerName(v),
            ("k8s", "container-image") => Selector::K8sImage(v),
            ("systemd", "unit") => Selector::SystemdUnit(v),
            ("unix", "uid") => Selector::UnixUid(value.parse().map_err(|_| format!("{s:?}: uid must be a number"))?),
            ("unix", "user") => Selector::UnixUser(v),
            ("unix", "path") => Selector::UnixPath(v),
            _ => {
                return Err(format!(
                    "{s:?}: unknown selector; known: k8s:ns, k8s:sa, k8s:pod-name, k8s:pod-label, \
                     k8s:container-name, k8s:container-image, systemd:unit, unix:uid, unix:user, unix:path"
                ))
            }
        })
    }
}

/// What a selector is checked against.
pub struct Attributes<'a> {
    pub id: &'a WorkloadIdentity,
    pub labels: Option<&'a BTreeMap<String, String>>,
}

/// All selectors must match for the rule's SPIFFE ID to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorRule {
    pub selectors: Vec<Selector>,
    pub id: String,
}

impl SelectorRule {
    pub fn parse(selectors: &[String], id: &str) -> Result<SelectorRule, String> {
        if selectors.is_empty() {
            return Err(format!("{id}: a rule needs at least one selector"));
        }
        if !id.starts_with("spiffe://") {
            return Err(format!("{id:?}: the id must be a spiffe:// URI"));
        }
        Ok(SelectorRule {
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s))
                .collect::<Result<_, _>>()?,
            id: id.to_owned(),
        })
    }

    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        let id = a.id;
        let eq = |o: &Option<String>, v: &str| o.as_deref() == Some(v);
        self.selectors.iter().all(|s| match s {
            Selector::K8sNamespace(v) => eq(&id.namespace, v),
            Selector::K8sServiceAccount(v) => eq(&id.service_account, v),
            Selector::K8sPodName(v) => eq(&id.pod, v),
            Selector::K8sPodLabel(k, v) => a.labels.and_then(|l| l.get(k)).is_some_and(|x| x == v),
            Selector::K8sContainerName(v) => eq(&id.container, v),
            Selector::K8sImage(v) => eq(&id.image, v),
            Selector::SystemdUnit(v) => eq(&id.unit, v),
            Selector::UnixUid(u) => id.uid == Some(*u),
            Selector::UnixUser(v) => eq(&id.user, v),
            Selector::UnixPath(v) => eq(&id.exe, v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKind;

    fn ident() -> WorkloadIdentity {
        WorkloadIdentity {
            id: "spiffe://td/ns/a/sa/b".into(),
            kind: IdentityKind::Kubernetes,
            namespace: Some("a".into()),
            service_account: Some("b".into()),
            pod: Some("p".into()),
            pod_uid: None,
            container: Some("app".into()),
            container_id: None,
            image: None,
            owner: None,
            unit: None,
            uid: Some(0),
            user: Some("root".into()),
            exe: Some("/bin/sh".into()),
            node: "n".into(),
        }
    }

    #[test]
    fn all_selectors_must_match() {
        let id = ident();
        let labels: BTreeMap<String, String> = [("app".to_string(), "x".to_string())].into();
        let a = Attributes {
            id: &id,
            labels: Some(&labels),
        };
        let r = SelectorRule::parse(
            &["k8s:ns:a".into(), "k8s:pod-label:app:x".into()],
            "spiffe://td/x",
        )
        .unwrap();
        assert!(r.matches(&a));
        let r = SelectorRule::parse(
            &["k8s:ns:a".into(), "unix:path:/bin/bash".into()],
            "spiffe://td/x",
        )
        .unwrap();
        assert!(!r.matches(&a));
        let r = SelectorRule::parse(
            &["unix:uid:0".into(), "unix:path:/bin/sh".into()],
            "spiffe://td/x",
        )
        .unwrap();
        assert!(r.matches(&a));
    }

    #[test]
    fn bad_selectors_explain_themselves() {
        assert!(Selector::parse("k8s:nss:a")
            .unwrap_err()
            .contains("unknown selector"));
        assert!(Selector::parse("unix:uid:abc")
            .unwrap_err()
            .contains("number"));
        assert!(Selector::parse("k8s:pod-label:novalue")
            .unwrap_err()
            .contains("KEY:VALUE"));
        assert!(SelectorRule::parse(&["k8s:ns:a".into()], "http://x")
            .unwrap_err()
            .contains("spiffe"));
    }
}
