//! SPIRE-style selectors (`k8s:ns:x`, `container:name:y`, `systemd:unit:z`, `unix:uid:0` …) that name or override identities.

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
    ContainerName(String),
    ContainerImage(String),
    ContainerLabel(String, String),
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
            ("container", "name") => Selector::ContainerName(v),
            ("container", "image") => Selector::ContainerImage(v),
            ("container", "label") => {
                let (k, val) = value.split_once(':').ok_or_else(|| format!("{s:?}: expected container:label:KEY:VALUE"))?;
                Selector::ContainerLabel(k.to_owned(), val.to_owned())
            }
            ("systemd", "unit") => Selector::SystemdUnit(v),
            ("unix", "uid") => Selector::UnixUid(value.parse().map_err(|_| format!("{s:?}: uid must be a number"))?),
            ("unix", "user") => Selector::UnixUser(v),
            ("unix", "path") => Selector::UnixPath(v),
            _ => {
                return Err(format!(
                    "{s:?}: unknown selector; known: k8s:ns, k8s:sa, k8s:pod-name, k8s:pod-label, \
                     k8s:container-name, k8s:container-image, container:name, container:image, container:label, \
                     systemd:unit, unix:uid, unix:user, unix:path"
                ))
            }
        })
    }
}

/// What a selector is checked against.
pub struct Attributes<'a> {
    pub id: &'a WorkloadIdentity,
    /// The pod's labels (Kubernetes) or the container's (standalone containers).
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
        let standalone = id.kind == super::IdentityKind::Container;
        self.selectors.iter().all(|s| match s {
            Selector::K8sNamespace(v) => eq(&id.namespace, v),
            Selector::K8sServiceAccount(v) => eq(&id.service_account, v),
            Selector::K8sPodName(v) => eq(&id.pod, v),
            Selector::K8sPodLabel(k, v) => a.labels.and_then(|l| l.get(k)).is_some_and(|x| x == v),
            Selector::K8sContainerName(v) => eq(&id.container, v),
            Selector::K8sImage(v) => eq(&id.image, v),
            Selector::ContainerName(v) => standalone && eq(&id.container, v),
            Selector::ContainerImage(v) => standalone && eq(&id.image, v),
            Selector::ContainerLabel(k, v) => {
                standalone && a.labels.and_then(|l| l.get(k)).is_some_and(|x| x == v)
            }
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
    fn container_selectors_match_standalone_containers_only() {
        let mut id = ident();
        let labels: BTreeMap<String, String> = [("team".to_string(), "ml".to_string())].into();
        let rule = |sel: &[&str]| {
            SelectorRule::parse(
                &sel.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "spiffe://td/x",
            )
            .unwrap()
        };
        let sels = [
            "container:name:app",
            "container:image:localhost/app:1",
            "container:label:team:ml",
        ];
        id.image = Some("localhost/app:1".into());
        let a = Attributes {
            id: &id,
            labels: Some(&labels),
        };
        // A pod's container of that name and image is not a standalone container.
        assert!(!rule(&sels[..1]).matches(&a));
        let mut c = id.clone();
        c.kind = IdentityKind::Container;
        let a = Attributes {
            id: &c,
            labels: Some(&labels),
        };
        assert!(rule(&sels).matches(&a));
        assert!(!rule(&["container:label:team:web"]).matches(&a));
        assert!(!rule(&["container:image:localhost/app:2"]).matches(&a));
        assert!(Selector::parse("container:label:novalue")
            .unwrap_err()
            .contains("KEY:VALUE"));
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
