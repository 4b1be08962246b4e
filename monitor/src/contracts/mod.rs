//! Access contracts and the data-source catalogue: takes rules YAML files, gives a validated `RuleSet` or every error with its place.

mod files;
mod load;
pub mod schema;
pub mod telemetry;
mod values;
pub mod watch;

use std::{fmt, path::PathBuf, time::Duration};

use globset::GlobMatcher;

pub(crate) use load::yaml_opened_at;
pub use load::{load_paths, load_str, load_texts};
pub use schema::{Classification, CredentialKindSpec as CredentialKind, Method, Sharing};
pub use telemetry::RulesTelemetry;
pub use values::{parse_duration, parse_size, Date};

use crate::identity::selectors::SelectorRule;

/// Where a rule came from, so later findings can name the file and line that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

/// Every data source and contract of a rules directory, names resolved and globs compiled.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub data_sources: Vec<DataSource>,
    pub contracts: Vec<AccessContract>,
    /// Accepted, but worth telling (a contract without an owner).
    pub warnings: Vec<RuleError>,
}

#[derive(Debug)]
pub struct DataSource {
    pub name: String,
    pub classification: Classification,
    pub matchers: Vec<Matcher>,
    /// Declared token audiences (`audiences:`), as written.
    pub audiences: Vec<String>,
    pub origin: Origin,
}

#[derive(Debug)]
pub enum Matcher {
    /// An HTTP API: the host (a glob, lowercased) and the request paths (globs) it serves.
    Http {
        host: String,
        /// `None` for a host without glob characters, which is compared as it is: a compiled
        /// glob is a regex with a DFA of up to ~40 KB, most of a data source's memory.
        host_glob: Option<GlobMatcher>,
        paths: Vec<GlobMatcher>,
    },
    /// Files on the host, by path glob.
    File { glob: GlobMatcher },
}

#[derive(Debug)]
pub enum Subject {
    Identity(String),
    Selectors(SelectorRule),
}

#[derive(Debug)]
pub struct AccessContract {
    pub name: String,
    pub subject: Subject,
    /// Empty: nobody owns it (NHI-003 on its activity).
    pub owner: String,
    /// `sha256:` + 12 hex digits of the contract's document text.
    pub version: String,
    pub purpose: String,
    pub expires: Option<Date>,
    pub allow: Allow,
    pub credentials: CredentialPolicy,
    pub limits: Vec<Limit>,
    pub break_glass: bool,
    pub origin: Origin,
}

/// Data-source names refer to `RuleSet::data_sources` by name (validated to exist).
#[derive(Debug, Default)]
pub struct Allow {
    pub data_sources: Vec<String>,
    pub combinations: Vec<Vec<String>>,
    pub endpoints: Vec<Endpoint>,
    pub secrets: Vec<SecretGrant>,
    pub destinations: Vec<GlobMatcher>,
    pub scopes: Vec<ScopeGrant>,
}

/// `allow.scopes`: the scopes a token may carry on calls to one data source.
#[derive(Debug)]
pub struct ScopeGrant {
    pub data_source: String,
    /// As written, for evidence and reports.
    pub scopes: Vec<String>,
    /// The same, compiled (`*` does not cross `/`: `patient/*.read` is not `system/x.read`).
    pub globs: Vec<GlobMatcher>,
}

#[derive(Debug)]
pub struct Endpoint {
    pub data_source: String,
    pub methods: Vec<Method>,
}

#[derive(Debug)]
pub struct SecretGrant {
    pub path: GlobMatcher,
    /// Empty: any executable of the identity may read it.
    pub executables: Vec<String>,
}

#[derive(Debug, Default)]
pub struct CredentialPolicy {
    /// Empty: no restriction on the kind.
    pub kinds: Vec<CredentialKind>,
    pub max_token_ttl: Option<Duration>,
    pub shared: Sharing,
    pub require_audience: bool,
    /// None: the detectors' default (`detectors.credentials.max_key_age`).
    pub max_key_age: Option<Duration>,
}

#[derive(Debug)]
pub struct Limit {
    pub data_source: String,
    pub requests_per_minute: Option<u64>,
    pub bytes_per_hour: Option<u64>,
}

/// One problem in a rules file, shown as `FILE:LINE:COLUMN: what; expected …; hint: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub what: String,
    pub expected: String,
    pub hint: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}; expected {}; hint: {}",
            self.file.display(),
            self.line,
            self.column,
            self.what,
            self.expected,
            self.hint
        )
    }
}

#[cfg(test)]
mod tests;

/// Kernel watch patterns (`sensors.files.watch` syntax) covering every file data source, so that
/// reads of data files are observed without listing them twice.
pub fn watch_patterns(set: &RuleSet) -> Vec<String> {
    let mut out = Vec::new();
    for d in &set.data_sources {
        for m in &d.matchers {
            let Matcher::File { glob } = m else { continue };
            let g = glob.glob().glob();
            let wild = |s: &str| s.contains(['*', '?', '[', '{']);
            let p = if !wild(g) {
                g.to_owned()
            } else if let Some(dir) = g.strip_suffix("/**").filter(|d| !wild(d)) {
                format!("{dir}/")
            } else if g
                .split_once("/**/*.")
                .is_some_and(|(dir, ext)| !wild(dir) && !wild(ext) && !ext.contains('/'))
            {
                g.to_owned()
            } else {
                // The literal directory above the first wildcard: wider than the glob, never narrower.
                let cut = g.find(['*', '?', '[', '{']).unwrap_or(g.len());
                match g[..cut].rfind('/') {
                    Some(0) | None => continue,
                    Some(i) => format!("{}/", &g[..i]),
                }
            };
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}
