//! Token audiences against the destination a token was presented to: takes `aud` values, the request's host and path, the audiences its data source declares and the Kubernetes API server's names, gives whether one audience names the destination.

/// Whether any of `aud` names the request to `host` (lowercase, no port) and `path` (the
/// templated request path; empty when the request head was lost).
///
/// An audience names it when it is
/// - a URL whose host is `host` and whose path, if any, is a prefix of `path` at a `/`
///   boundary (`https://fhir.example.org/R4` names `/R4/Patient/{id}`, not `/R4x`). The port
///   is not compared: requests are kept by host only;
/// - a host (optionally `host:port` or `host/path`) compared the same way;
/// - one of `declared`, the audiences the request's data source accepts (opaque ids such as
///   `api://ehr-prod` or a client id), compared exactly (a trailing `/` aside);
/// - a Kubernetes API audience (`https://kubernetes.default.svc…`) while `host` is the API
///   server: `kubernetes`, `kubernetes.default`, `kubernetes.default.svc[.…]` or one of
///   `api_hosts` (its service IP as in-cluster clients dial it).
pub(super) fn names_destination(
    aud: &[String],
    host: &str,
    path: &str,
    declared: &[String],
    api_hosts: &[String],
) -> bool {
    let api_server = is_kubernetes_api_host(host) || api_hosts.iter().any(|h| h == host);
    aud.iter().any(|a| {
        let a = a.trim();
        let (a_host, a_path) = split(a);
        (a_host.eq_ignore_ascii_case(host) && path_prefix(a_path, path))
            || declared
                .iter()
                .any(|d| d.trim().trim_end_matches('/') == a.trim_end_matches('/'))
            || (api_server && is_kubernetes_api_host(&a_host.to_ascii_lowercase()))
    })
}

/// `kubernetes`, `kubernetes.default`, `kubernetes.default.svc` and `kubernetes.default.svc.…`
/// (the cluster domain): the names of the API server's Service, and of its default audience.
pub(super) fn is_kubernetes_api_host(h: &str) -> bool {
    matches!(
        h,
        "kubernetes" | "kubernetes.default" | "kubernetes.default.svc"
    ) || h
        .strip_prefix("kubernetes.default.svc.")
        .is_some_and(|rest| !rest.is_empty())
}

/// An audience's host (no user info, no port) and path (`""` when none, or only `/`).
fn split(a: &str) -> (&str, &str) {
    let rest = match a.find("://") {
        Some(i) => &a[i + 3..],
        None => a,
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // The path ends at a query or fragment.
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        },
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (host, path.trim_end_matches('/'))
}

/// `prefix` (no trailing `/`) is `path` or its ancestor; an empty prefix, or a lost path,
/// always is (the host decides then).
fn path_prefix(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() || path.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(aud: &[&str], host: &str, path: &str, declared: &[&str], api: &[&str]) -> bool {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        names_destination(&v(aud), host, path, &v(declared), &v(api))
    }

    #[test]
    fn by_url_host_and_path_prefix() {
        let fhir = "fhir.ehr.example.org";
        for aud in [
            "https://fhir.ehr.example.org/R4",
            "https://fhir.ehr.example.org/R4/",
            "https://FHIR.ehr.example.org:8443/R4",
            "https://fhir.ehr.example.org",
            "https://fhir.ehr.example.org/",
            "https://svc@fhir.ehr.example.org/R4?x=1",
            "fhir.ehr.example.org",
            "fhir.ehr.example.org:443",
            "fhir.ehr.example.org/R4",
        ] {
            assert!(names(&[aud], fhir, "/R4/Patient/{id}", &[], &[]), "{aud}");
        }
        for aud in [
            "https://fhir.ehr.example.org/R5",
            "https://fhir.ehr.example.org/R4x",
            "https://billing.example.org/R4",
            "https://fhir.ehr.example.org.evil.example/R4",
            "api://fhir.ehr.example.org-app",
            "ehr.example.org",
            "",
        ] {
            assert!(!names(&[aud], fhir, "/R4/Patient/{id}", &[], &[]), "{aud}");
        }
        // One of several is enough; a lost path leaves the host to decide.
        assert!(names(
            &["api://x", "https://fhir.ehr.example.org/R4"],
            fhir,
            "/R4/Observation",
            &[],
            &[]
        ));
        assert!(names(
            &["https://fhir.ehr.example.org/R4"],
            fhir,
            "",
            &[],
            &[]
        ));
        assert!(names(
            &["https://[fd00::1]:6443/api"],
            "fd00::1",
            "/api/v1/pods",
            &[],
            &[]
        ));
    }

    #[test]
    fn by_declared_audiences() {
        assert!(names(
            &["api://ehr-prod"],
            "fhir.ehr.example.org",
            "/R4",
            &["api://ehr-prod"],
            &[]
        ));
        assert!(names(&["0c6a1f3e"], "h", "/", &["0c6a1f3e"], &[]));
        assert!(names(
            &["api://billing-prod"],
            "billing.nhiwatch.test",
            "/api/invoices/{id}",
            &["api://billing-prod"],
            &[]
        ));
        assert!(!names(
            &["api://ehr-test"],
            "fhir.ehr.example.org",
            "/R4",
            &["api://ehr-prod"],
            &[]
        ));
    }

    #[test]
    fn kubernetes_api_server() {
        let sa = [
            "https://kubernetes.default.svc.cluster.local",
            "https://kubernetes.default.svc",
            "kubernetes.default.svc",
        ];
        for aud in sa {
            for host in [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ] {
                assert!(
                    names(&[aud], host, "/api/v1/namespaces", &[], &[]),
                    "{aud} {host}"
                );
            }
            // By its service IP only when that is the API server's.
            assert!(names(&[aud], "10.96.0.1", "/api", &[], &["10.96.0.1"]));
            assert!(!names(&[aud], "10.96.0.1", "/api", &[], &[]));
            // An API-server token sent elsewhere is a mismatch.
            assert!(!names(
                &[aud],
                "fhir.ehr.example.org",
                "/R4",
                &[],
                &["10.96.0.1"]
            ));
        }
        // A token for another API is not good at the API server.
        assert!(!names(
            &["https://fhir.ehr.example.org"],
            "kubernetes.default.svc",
            "/api",
            &[],
            &[]
        ));
        assert!(!is_kubernetes_api_host("kubernetes.default.svc."));
        assert!(!is_kubernetes_api_host("kubernetes.example.org"));
    }
}
