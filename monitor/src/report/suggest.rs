//! `nhiwatch suggest`: takes one identity's record and the rules, gives YAML: a draft contract from what an ungoverned identity did, or the unused grants of a governed one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use super::{
    credential_kind, credential_kind_name, method_name, parse_method, resolve_contract, rfc3339,
    CREDENTIAL_KINDS, METHODS,
};
use crate::{
    contracts::{AccessContract, CredentialKind, Matcher, Method, RuleSet, Sharing},
    detect::state::{IdentityRecord, Usage},
    identity::IdentityKind,
};

/// How long a drafted contract is valid before someone must review it.
const DRAFT_VALIDITY_DAYS: i64 = 90;
/// Floor for a drafted requestsPerMinute, so a rarely used source is not flagged on its first burst.
const MIN_REQUESTS_PER_MINUTE: u64 = 10;
const DAY: i64 = 86_400;

#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    /// The contract governing the identity; None: `yaml` is a draft contract for it.
    pub contract: Option<String>,
    /// The grants unused for the asked number of days, one line each (empty for a draft).
    pub unused: Vec<String>,
    pub yaml: String,
}

/// A draft contract for an ungoverned identity, or for a governed one its unused grants and the
/// contract's allow section without them.
pub fn suggest(
    record: &IdentityRecord,
    rules: &RuleSet,
    now_unix: i64,
    unused_days: u32,
) -> Suggestion {
    match resolve_contract(rules, record) {
        Some(c) => shrink(record, c, rules, now_unix, unused_days),
        None => Suggestion {
            contract: None,
            unused: Vec::new(),
            yaml: draft(record, rules, now_unix),
        },
    }
}

fn draft(r: &IdentityRecord, rules: &RuleSet, now: i64) -> String {
    let known: BTreeSet<&str> = rules.data_sources.iter().map(|d| d.name.as_str()).collect();
    let methods = methods_by_source(r);
    let mut seen: BTreeSet<&str> = r.data_sources.keys().map(String::as_str).collect();
    seen.extend(r.pairs.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]));
    seen.extend(methods.keys().copied());
    let (sources, unknown): (Vec<&str>, Vec<&str>) =
        seen.into_iter().partition(|d| known.contains(d));

    let mut y = String::new();
    let id = &r.identity;
    let _ = writeln!(y, "# Draft access contract for {}", comment(&id.id));
    let _ = writeln!(
        y,
        "# from what it did between {} and {}. Review every grant and fill in the TODOs.",
        rfc3339(r.first_seen),
        rfc3339(r.last_seen)
    );
    if !r.executables.is_empty() {
        let exes: Vec<&str> = r.executables.keys().map(String::as_str).collect();
        let _ = writeln!(y, "# Executables seen: {}", comment(&exes.join(", ")));
    }
    if r.dropped > 0 {
        let _ = writeln!(
            y,
            "# {} sightings were not remembered (state full): this draft may miss grants.",
            r.dropped
        );
    }
    if !unknown.is_empty() {
        let _ = writeln!(
            y,
            "# Used, but not a DataSource in the current rules (define them to grant them): {}",
            comment(&unknown.join(", "))
        );
    }
    y.push_str("apiVersion: nhiwatch.dev/v1\nkind: AccessContract\nmetadata:\n");
    let _ = writeln!(y, "  name: {}", draft_name(r, rules));
    y.push_str("spec:\n");
    let _ = writeln!(y, "  identity: {}", q(&id.id));
    y.push_str("  owner: \"\"  # TODO: the team or person accountable for this identity\n");
    y.push_str("  purpose: \"TODO: why this identity needs this access\"\n");
    let _ = writeln!(
        y,
        "  expires: {}  # review by then",
        &rfc3339(now.saturating_add(DRAFT_VALIDITY_DAYS * DAY))[..10]
    );

    let mut allow = String::new();
    if !sources.is_empty() {
        let _ = writeln!(allow, "    dataSources: {}", flow(&sources));
    }
    if sources.len() >= 2 {
        let _ = writeln!(allow, "    combinations:\n      - {}", flow(&sources));
        let pairs: Vec<String> = r
            .pairs
            .iter()
            .filter(|(a, b)| known.contains(a.as_str()) && known.contains(b.as_str()))
            .map(|(a, b)| format!("{a}+{b}"))
            .collect();
        if !pairs.is_empty() {
            let _ = writeln!(
                allow,
                "      # pairs seen together (split the entry above to be stricter): {}",
                pairs.join(", ")
            );
        }
    }
    let mut endpoints = String::new();
    for ds in &sources {
        let Some(ms) = methods.get(ds) else { continue };
        let parsed: Option<Vec<Method>> = ms.iter().map(|m| parse_method(m)).collect();
        match parsed {
            Some(found) => {
                let names: Vec<&str> = METHODS
                    .into_iter()
                    .filter(|m| found.contains(m))
                    .map(method_name)
                    .collect();
                let _ = writeln!(
                    endpoints,
                    "      - {{dataSource: {ds}, methods: {}}}",
                    flow(&names)
                );
            }
            None => {
                let _ = writeln!(
                    endpoints,
                    "      # {ds}: methods {} include one a contract cannot name, so any method is allowed",
                    comment(&ms.iter().copied().collect::<Vec<_>>().join(", "))
                );
            }
        }
    }
    if !endpoints.is_empty() {
        allow.push_str("    endpoints:\n");
        allow.push_str(&endpoints);
    }
    let scopes = scopes_by_source(r);
    let mut scope_lines = String::new();
    for ds in &sources {
        let Some(used) = scopes.get(ds) else { continue };
        let (plain, odd): (Vec<&str>, Vec<&str>) = used
            .iter()
            .partition(|s| !s.contains(['?', '[', ']', '{', '}', '\\', ',']));
        if !plain.is_empty() {
            let quoted: Vec<String> = plain.iter().map(|s| q(s)).collect();
            let _ = writeln!(
                scope_lines,
                "      - {{dataSource: {ds}, scopes: [{}]}}",
                quoted.join(", ")
            );
        }
        if !odd.is_empty() {
            let _ = writeln!(
                scope_lines,
                "      # {ds}: scopes with glob characters, not drafted: {}",
                comment(&odd.join(", "))
            );
        }
    }
    if !scope_lines.is_empty() {
        allow.push_str("    scopes:  # token scopes seen (a * in a scope is a glob here too)\n");
        allow.push_str(&scope_lines);
    }
    let mut secrets = String::new();
    for (path, s) in &r.secrets {
        let exes: Vec<&str> = s
            .executables
            .iter()
            .map(String::as_str)
            .filter(|x| x.starts_with('/'))
            .collect();
        if !path.starts_with('/') || exes.len() != s.executables.len() || exes.is_empty() {
            let _ = writeln!(
                secrets,
                "      # not granted (no absolute path or executable to name): {}",
                comment(path)
            );
            continue;
        }
        let _ = writeln!(secrets, "      - path: {}", q(&escape_glob(path)));
        let _ = writeln!(secrets, "        executables: {}", flow(&exes));
    }
    if !secrets.is_empty() {
        allow.push_str("    secrets:\n");
        allow.push_str(&secrets);
    }
    if !r.destinations.is_empty() {
        allow.push_str("    destinations:\n");
        for host in r.destinations.keys() {
            let _ = writeln!(allow, "      - host: {}", q(&escape_glob(host)));
        }
    }
    if allow.is_empty() {
        y.push_str("  allow: {}\n");
    } else {
        y.push_str("  allow:\n");
        y.push_str(&allow);
    }

    let used: Vec<Option<CredentialKind>> = r
        .credentials
        .values()
        .map(|c| credential_kind(&c.kind))
        .collect();
    let kinds: Vec<&str> = CREDENTIAL_KINDS
        .into_iter()
        .filter(|k| used.contains(&Some(*k)))
        .map(credential_kind_name)
        .collect();
    let odd: BTreeSet<&str> = r
        .credentials
        .values()
        .filter(|c| credential_kind(&c.kind).is_none())
        .map(|c| c.kind.as_str())
        .collect();
    let ttl = r
        .credentials
        .values()
        .filter(|c| c.kind == "jwt")
        .filter_map(|c| c.max_ttl_seconds)
        .filter(|t| *t > 0)
        .max();
    if !kinds.is_empty() || ttl.is_some() {
        y.push_str("  credentials:\n");
        if !kinds.is_empty() {
            let _ = writeln!(y, "    kinds: {}", flow(&kinds));
        }
        if !odd.is_empty() {
            let _ = writeln!(
                y,
                "    # kinds a contract cannot name: {}",
                comment(&odd.into_iter().collect::<Vec<_>>().join(", "))
            );
        }
        if let Some(t) = ttl {
            let _ = writeln!(y, "    maxTokenTtl: {}", q(&ttl_text(t)));
        }
    }
    let limits: Vec<(&str, u64)> = sources
        .iter()
        .filter_map(|ds| {
            let peak = *r.peak_requests_per_minute.get(*ds)?;
            Some((*ds, peak.saturating_mul(2).max(MIN_REQUESTS_PER_MINUTE)))
        })
        .collect();
    if !limits.is_empty() {
        y.push_str("  limits:  # twice the busiest minute seen\n");
        for (ds, rpm) in limits {
            let _ = writeln!(y, "    - {{dataSource: {ds}, requestsPerMinute: {rpm}}}");
        }
    }
    y
}

fn shrink(
    r: &IdentityRecord,
    c: &AccessContract,
    rules: &RuleSet,
    now: i64,
    unused_days: u32,
) -> Suggestion {
    let cutoff = now.saturating_sub(i64::from(unused_days) * DAY);
    let recent = |u: Option<&Usage>| u.is_some_and(|u| u.last_seen >= cutoff);
    let when = |u: Option<&Usage>| match u {
        Some(u) => format!("last used {}", rfc3339(u.last_seen)),
        None => "never used".to_owned(),
    };
    let head = format!("{} ({}:{})", c.name, c.origin.file.display(), c.origin.line);
    let mut out = Suggestion {
        contract: Some(c.name.clone()),
        unused: Vec::new(),
        yaml: String::new(),
    };
    if c.break_glass {
        out.yaml = format!(
            "# {}: a break-glass contract; its grants exist for emergencies and are not shrunk\n",
            comment(&head)
        );
        return out;
    }
    let a = &c.allow;
    let unused = &mut out.unused;

    let mut sources: Vec<&str> = Vec::new();
    for ds in &a.data_sources {
        let u = r.data_sources.get(ds);
        if recent(u) {
            sources.push(ds);
        } else {
            unused.push(format!("dataSource {ds}: {}", when(u)));
        }
    }
    let kept = |ds: &str| sources.contains(&ds);

    let mut combinations: Vec<Vec<&str>> = Vec::new();
    for combo in &a.combinations {
        let left: Vec<&str> = combo
            .iter()
            .map(String::as_str)
            .filter(|d| kept(d))
            .collect();
        if left.len() >= 2 && !combinations.contains(&left) {
            combinations.push(left);
        }
    }

    let mut endpoints: Vec<(&str, Vec<&'static str>)> = Vec::new();
    for e in a.endpoints.iter().filter(|e| kept(&e.data_source)) {
        let usage = |m: Method| {
            r.methods
                .get(&format!("{} {}", e.data_source, method_name(m)))
        };
        let (used, idle): (Vec<Method>, Vec<Method>) =
            e.methods.iter().partition(|m| recent(usage(**m)));
        for m in &idle {
            let mut line = format!(
                "endpoint {} {}: {}",
                e.data_source,
                method_name(*m),
                when(usage(*m))
            );
            if used.is_empty() {
                // An endpoint entry without methods would mean "any method": keep it whole.
                line.push_str(" (kept: removing every method of an entry would allow any)");
            }
            unused.push(line);
        }
        let keep = if used.is_empty() { &e.methods } else { &used };
        endpoints.push((
            &e.data_source,
            keep.iter().map(|m| method_name(*m)).collect(),
        ));
    }

    // Scopes recorded under any data source of the same host count for a grant: tokens are
    // judged per host (see the credentials detector).
    let hosts_of = |ds: &str| -> Vec<&str> {
        rules
            .data_sources
            .iter()
            .filter(|d| d.name == ds)
            .flat_map(|d| d.matchers.iter())
            .filter_map(|m| match m {
                Matcher::Http { host, .. } => Some(host.as_str()),
                Matcher::File { .. } => None,
            })
            .collect()
    };
    let mut scope_grants: Vec<(&str, Vec<&str>)> = Vec::new();
    for g in a.scopes.iter().filter(|g| kept(&g.data_source)) {
        let hosts = hosts_of(&g.data_source);
        let near: BTreeSet<&str> = rules
            .data_sources
            .iter()
            .filter(|d| hosts_of(&d.name).iter().any(|h| hosts.contains(h)))
            .map(|d| d.name.as_str())
            .chain([g.data_source.as_str()])
            .collect();
        let usage = |glob: &globset::GlobMatcher| {
            r.scopes
                .iter()
                .filter(|(k, _)| {
                    k.split_once(' ')
                        .is_some_and(|(d, s)| near.contains(d) && glob.is_match(s))
                })
                .map(|(_, u)| *u)
                .max_by_key(|u| u.last_seen)
        };
        let mut used = Vec::new();
        let mut idle = Vec::new();
        for (pattern, glob) in g.scopes.iter().zip(&g.globs) {
            let u = usage(glob);
            if recent(u.as_ref()) {
                used.push(pattern.as_str());
            } else {
                idle.push((pattern.as_str(), u));
            }
        }
        for (pattern, u) in &idle {
            let mut line = format!(
                "scope {} on {}: {}",
                pattern,
                g.data_source,
                when(u.as_ref())
            );
            if used.is_empty() {
                line.push_str(" (kept: a data source without scopes is not judged)");
            }
            unused.push(line);
        }
        let keep = if used.is_empty() {
            g.scopes.iter().map(String::as_str).collect()
        } else {
            used
        };
        scope_grants.push((&g.data_source, keep));
    }

    let mut secrets: Vec<(&str, Vec<&str>)> = Vec::new();
    for g in &a.secrets {
        let pattern = g.path.glob().glob();
        let opened: Vec<_> = r
            .secrets
            .iter()
            .filter(|(p, s)| g.path.is_match(p) && recent(Some(&s.usage)))
            .collect();
        if opened.is_empty() {
            let last = r
                .secrets
                .iter()
                .filter(|(p, _)| g.path.is_match(p))
                .map(|(_, s)| s.usage)
                .max_by_key(|u| u.last_seen);
            unused.push(format!("secret {pattern}: {}", when(last.as_ref())));
            continue;
        }
        // Which executable opened a secret is kept without a time: "recent" is per path.
        let by: BTreeSet<&str> = opened
            .iter()
            .flat_map(|(_, s)| s.executables.iter().map(String::as_str))
            .collect();
        let (exes, idle): (Vec<&str>, Vec<&str>) = g
            .executables
            .iter()
            .map(String::as_str)
            .partition(|x| by.contains(x));
        for x in &idle {
            unused.push(format!("secret {pattern} by {x}: not seen opening it"));
        }
        let exes = if exes.is_empty() && !g.executables.is_empty() {
            // An empty list would mean "any executable": keep the grant as written.
            g.executables.iter().map(String::as_str).collect()
        } else {
            exes
        };
        secrets.push((pattern, exes));
    }

    // Hosts of data sources are recorded under the data source, not as destinations.
    let source_hosts: Vec<&str> = rules
        .data_sources
        .iter()
        .filter(|d| kept(&d.name))
        .flat_map(|d| d.matchers.iter())
        .filter_map(|m| match m {
            Matcher::Http { host, .. } => Some(host.as_str()),
            Matcher::File { .. } => None,
        })
        .collect();
    let mut destinations: Vec<&str> = Vec::new();
    for d in &a.destinations {
        let pattern = d.glob().glob();
        let used = r
            .destinations
            .iter()
            .any(|(h, u)| d.is_match(h) && recent(Some(u)))
            || source_hosts.iter().any(|h| d.is_match(h));
        if used {
            destinations.push(pattern);
        } else {
            let last = r
                .destinations
                .iter()
                .filter(|(h, _)| d.is_match(h))
                .map(|(_, u)| *u)
                .max_by_key(|u| u.last_seen);
            unused.push(format!("destination {pattern}: {}", when(last.as_ref())));
        }
    }

    let p = &c.credentials;
    let mut kinds: Vec<CredentialKind> = Vec::new();
    let mut idle_kinds = Vec::new();
    for k in &p.kinds {
        let last = r
            .credentials
            .values()
            .filter(|u| credential_kind(&u.kind) == Some(*k))
            .map(|u| u.usage)
            .max_by_key(|u| u.last_seen);
        if recent(last.as_ref()) {
            kinds.push(*k);
        } else {
            idle_kinds.push((*k, last));
        }
    }
    for (k, last) in &idle_kinds {
        let mut line = format!(
            "credential kind {}: {}",
            credential_kind_name(*k),
            when(last.as_ref())
        );
        if kinds.is_empty() {
            line.push_str(" (kept: an empty kinds list would allow every kind)");
        }
        unused.push(line);
    }
    if kinds.is_empty() {
        kinds = p.kinds.clone();
    }

    let mut y = String::new();
    if unused.is_empty() {
        let _ = writeln!(
            y,
            "# {}: no unused grants in the last {unused_days} days",
            comment(&head)
        );
        out.yaml = y;
        return out;
    }
    let _ = writeln!(
        y,
        "# {}: {} grant{} unused in the last {unused_days} days (since {}):",
        comment(&head),
        unused.len(),
        if unused.len() == 1 { "" } else { "s" },
        rfc3339(cutoff)
    );
    for u in unused.iter() {
        let _ = writeln!(y, "#   - {}", comment(u));
    }
    if r.first_seen > cutoff {
        let _ = writeln!(
            y,
            "# Note: observed only since {}, less than {unused_days} days: weak evidence.",
            rfc3339(r.first_seen)
        );
    }
    if combinations.is_empty() && !a.combinations.is_empty() && sources.len() >= 2 {
        y.push_str(
            "# Note: no combination is left; with none, any combination is allowed. Add one.\n",
        );
    }
    y.push_str("# Replace the contract's allow and credentials sections with:\n");
    let mut allow = String::new();
    if !sources.is_empty() {
        let _ = writeln!(allow, "  dataSources: {}", flow(&sources));
    }
    if !combinations.is_empty() {
        allow.push_str("  combinations:\n");
        for combo in &combinations {
            let _ = writeln!(allow, "    - {}", flow(combo));
        }
    }
    if !endpoints.is_empty() {
        allow.push_str("  endpoints:\n");
        for (ds, ms) in &endpoints {
            let _ = writeln!(allow, "    - {{dataSource: {ds}, methods: {}}}", flow(ms));
        }
    }
    if !scope_grants.is_empty() {
        allow.push_str("  scopes:\n");
        for (ds, scopes) in &scope_grants {
            let quoted: Vec<String> = scopes.iter().map(|s| q(s)).collect();
            let _ = writeln!(
                allow,
                "    - {{dataSource: {ds}, scopes: [{}]}}",
                quoted.join(", ")
            );
        }
    }
    if !secrets.is_empty() {
        allow.push_str("  secrets:\n");
        for (path, exes) in &secrets {
            let _ = writeln!(allow, "    - path: {}", q(path));
            if !exes.is_empty() {
                let _ = writeln!(allow, "      executables: {}", flow(exes));
            }
        }
    }
    if !destinations.is_empty() {
        allow.push_str("  destinations:\n");
        for d in &destinations {
            let _ = writeln!(allow, "    - host: {}", q(d));
        }
    }
    if allow.is_empty() {
        y.push_str("allow: {}\n");
    } else {
        y.push_str("allow:\n");
        y.push_str(&allow);
    }
    if !kinds.is_empty()
        || p.max_token_ttl.is_some()
        || p.shared == Sharing::Allowed
        || p.require_audience
        || p.max_key_age.is_some()
    {
        y.push_str("credentials:\n");
        if !kinds.is_empty() {
            let names: Vec<&str> = kinds.iter().map(|k| credential_kind_name(*k)).collect();
            let _ = writeln!(y, "  kinds: {}", flow(&names));
        }
        if let Some(t) = p.max_token_ttl {
            let _ = writeln!(
                y,
                "  maxTokenTtl: {}",
                q(&humantime::format_duration(t).to_string())
            );
        }
        if p.shared == Sharing::Allowed {
            y.push_str("  shared: allowed\n");
        }
        if p.require_audience {
            y.push_str("  requireAudience: true\n");
        }
        if let Some(age) = p.max_key_age {
            let text = if age.as_secs() % (DAY as u64) == 0 {
                format!("{}d", age.as_secs() / DAY as u64)
            } else {
                humantime::format_duration(age).to_string()
            };
            let _ = writeln!(y, "  maxKeyAge: {}", q(&text));
        }
    }
    out.yaml = y;
    out
}

/// `ehr-patients patient/*.read` keys grouped by data source.
fn scopes_by_source(r: &IdentityRecord) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for key in r.scopes.keys() {
        // Data-source names have no space; a scope is one word of a space-separated claim.
        if let Some((ds, s)) = key.split_once(' ') {
            out.entry(ds).or_default().insert(s);
        }
    }
    out
}

/// `ehr-medications GET` keys grouped by data source.
fn methods_by_source(r: &IdentityRecord) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for key in r.methods.keys() {
        if let Some((ds, m)) = key.rsplit_once(' ') {
            out.entry(ds).or_default().insert(m);
        }
    }
    out
}

/// A token lifetime rounded up to the minute, as the rules write durations (`1h`, `1h 30m`).
fn ttl_text(seconds: i64) -> String {
    let minutes = u64::try_from(seconds).unwrap_or(0).div_ceil(60).max(1);
    humantime::format_duration(Duration::from_secs(minutes * 60)).to_string()
}

/// A contract name for the identity: its service account, unit or user, as a valid, unused name.
fn draft_name(r: &IdentityRecord, rules: &RuleSet) -> String {
    let id = &r.identity;
    let base = match id.kind {
        IdentityKind::Kubernetes => id.service_account.clone().or(id.pod.clone()),
        IdentityKind::Container => id.container.clone(),
        IdentityKind::Systemd => id
            .unit
            .as_deref()
            .map(|u| u.strip_suffix(".service").unwrap_or(u).to_owned()),
        IdentityKind::Unix => id.user.clone().or(id.uid.map(|u| format!("uid-{u}"))),
    }
    .or_else(|| id.id.rsplit('/').next().map(str::to_owned))
    .unwrap_or_default();
    let mut name = String::new();
    for c in base.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let fit = |s: &str, room: usize| -> String {
        s.chars()
            .take(room)
            .collect::<String>()
            .trim_end_matches('-')
            .to_owned()
    };
    let name = match fit(&name, 63) {
        n if n.is_empty() => "identity".to_owned(),
        n => n,
    };
    let taken = |n: &str| rules.contracts.iter().any(|c| c.name == n);
    if !taken(&name) {
        return name;
    }
    (1..)
        .map(|i| {
            let suffix = if i == 1 {
                "-draft".to_owned()
            } else {
                format!("-draft-{i}")
            };
            format!("{}{suffix}", fit(&name, 63 - suffix.len()))
        })
        .find(|n| !taken(n))
        .unwrap_or(name)
}

/// A YAML scalar: plain when it cannot be misread, else double-quoted (JSON escapes are YAML's).
fn q(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
    }
}

fn flow<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", parts.join(", "))
}

/// Observed values inside a `#` comment: one line, no control characters.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A literal path or host as a glob that matches only itself (globset escapes with `\\` on Unix).
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_quoted_when_yaml_could_misread_them() {
        for plain in ["ehr-medications", "/app/summarizer", "pypi.org", "GET"] {
            assert_eq!(q(plain), plain);
        }
        for quoted in [
            "*.svc.cluster.local",
            "yes",
            "No",
            "null",
            "1h",
            "10.0.0.5",
            "a b",
            "x: y",
            "",
            "spiffe://a/b",
        ] {
            let out = q(quoted);
            assert!(out.starts_with('"'), "{quoted} -> {out}");
            let back: String = serde_yaml_ng::from_str(&out).unwrap();
            assert_eq!(back, quoted);
        }
        assert_eq!(flow(&["a", "*b"]), "[a, \"*b\"]");
    }

    #[test]
    fn escaped_globs_match_only_the_literal_path() {
        let raw = "/etc/keys/[prod]{a,b}*?.pem\\x";
        let g = globset::GlobBuilder::new(&escape_glob(raw))
            .literal_separator(true)
            .build()
            .unwrap()
            .compile_matcher();
        assert!(g.is_match(raw));
        assert!(!g.is_match("/etc/keys/p{a,b}*?.pem\\x"));
        assert!(!g.is_match("/etc/keys/[prod]a-long.pem\\x"));
    }

    #[test]
    fn token_lifetimes_round_up_to_the_minute() {
        assert_eq!(ttl_text(3600), "1h");
        assert_eq!(ttl_text(3599), "1h");
        assert_eq!(ttl_text(3601), "1h 1m");
        assert_eq!(ttl_text(1), "1m");
        assert_eq!(ttl_text(86_400 * 2), "2days");
        for s in [3601, 1, 86_400 * 2, 400 * 86_400] {
            assert!(humantime::parse_duration(&ttl_text(s)).unwrap().as_secs() >= s as u64);
        }
    }
}
