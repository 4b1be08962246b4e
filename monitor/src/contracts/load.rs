//! Rules loading: takes rules files or directories, gives a `RuleSet` or every error located at FILE:LINE:COLUMN.
//!
//! Locations: serde_yaml_ng reports a location for syntax and shape errors. For semantic errors
//! (unknown names, overlaps, bad dates…) the parsed values carry no spans, so the loader splits each
//! file into documents itself, remembers the line each document starts on, and searches the
//! document's text for the offending key (and value) to report its line and column. When the text
//! search cannot find it (e.g. an unusual layout) the error points at the document's first line.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use globset::{GlobBuilder, GlobMatcher};
use serde::de::DeserializeOwned;

use super::{
    files::{io_error, rules_files, Listing},
    schema::{self, AccessContractSpec, DataSourceSpec, Document, Header, API_VERSION},
    values, AccessContract, Allow, CredentialPolicy, DataSource, Endpoint, Limit, Matcher, Origin,
    RuleError, RuleSet, ScopeGrant, SecretGrant, Subject,
};
use crate::identity::selectors::SelectorRule;

/// Data sources and contracts of all rules files together. Each compiled rule keeps its globs
/// (a compiled regex each) for as long as it is in force.
pub const MAX_DOCUMENTS: usize = 5000;

const SCHEMA_HINT: &str = "see rules/schema/nhiwatch-rules.schema.json";

/// Loads the rules files the paths name (`files::rules_files`: files as given, the `*.yaml`/`*.yml`
/// files of directories, not recursive, sorted by name), then validates them together (names
/// resolve across files).
pub fn load_paths(paths: &[PathBuf]) -> Result<RuleSet, Vec<RuleError>> {
    let Listing {
        files: texts,
        mut errors,
    } = rules_files(paths);
    let mut loaded = Vec::new();
    let mut total = 0u64;
    for f in texts {
        use crate::input::{read_text, InputError, MAX_RULES_FILE_BYTES, MAX_RULES_TOTAL_BYTES};
        // Not a FIFO or device, at most a ConfigMap's 1 MiB each and 4 MiB in all: a 50 MB
        // file used to cost gigabytes before the first check.
        match read_text(&f, MAX_RULES_FILE_BYTES, "a rules file") {
            Ok(t) if total + t.len() as u64 > MAX_RULES_TOTAL_BYTES => {
                errors.push(io_error(
                    &f,
                    format!(
                        "the rules files read so far and this one hold {} bytes, more than the limit of {MAX_RULES_TOTAL_BYTES} bytes for all rules files together",
                        total + t.len() as u64
                    ),
                    "split the rules between fewer, smaller files, or remove unused ones",
                ));
                break;
            }
            Ok(t) => {
                total += t.len() as u64;
                loaded.push((f, t));
            }
            Err(e) => {
                let hint = match e {
                    InputError::TooLarge { .. } => {
                        "a rules file holds at most 1 MiB (a ConfigMap's maximum); split it"
                    }
                    InputError::NotRegular { .. } => {
                        "rules are read from regular files (or symlinks to them) only"
                    }
                    _ => "check the path and its permissions",
                };
                let what = e.to_string();
                // The error already starts with the path, which RuleError shows too.
                let what = what
                    .strip_prefix(&format!("{}: ", f.display()))
                    .unwrap_or(&what)
                    .to_owned();
                errors.push(io_error(&f, format!("cannot read file: {what}"), hint));
            }
        }
    }
    match load_texts(&loaded) {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(errors),
        Err(mut e) => {
            errors.append(&mut e);
            Err(errors)
        }
    }
}

/// Validates rules given as (file name, text) pairs, in order; names resolve across all of them.
pub fn load_texts(files: &[(PathBuf, String)]) -> Result<RuleSet, Vec<RuleError>> {
    let mut l = Loader::default();
    let mut documents = 0;
    for (file, text) in files {
        // Before the parser, whose cost grows with the square of the nesting depth.
        if let Err(d) = crate::input::yaml_depth(text, crate::input::MAX_YAML_DEPTH) {
            l.errors.push(RuleError {
                file: file.clone(),
                line: d.line,
                column: d.column,
                what: format!("YAML nested {} levels deep", d.depth),
                expected: format!("at most {} levels of nesting", crate::input::MAX_YAML_DEPTH),
                hint: "rules need fewer than 10 levels; check for runaway brackets".into(),
            });
            continue;
        }
        for doc in split_documents(file, text) {
            documents += 1;
            if documents > MAX_DOCUMENTS {
                let at = (doc.first_line, 1);
                l.errors.push(doc.error(
                    at,
                    format!("more than {MAX_DOCUMENTS} rules documents"),
                    format!("at most {MAX_DOCUMENTS} data sources and contracts in all rules files"),
                    "each compiled rule costs memory in the daemon; merge data sources with globs, or govern groups of workloads with selectors",
                ));
                return Err(l.errors);
            }
            l.parse(doc);
        }
    }
    l.finish()
}

/// Shorthand for one text, for tests and tools.
pub fn load_str(file: &str, text: &str) -> Result<RuleSet, Vec<RuleError>> {
    load_texts(&[(PathBuf::from(file), text.to_owned())])
}

/// One YAML document of a file: its text (separator blanked, so columns stay right) and the
/// file line its first text line has.
#[derive(Debug)]
struct Doc {
    file: PathBuf,
    first_line: usize,
    text: String,
}

/// Splits at `---`/`...` marker lines. YAML forbids these at a line start inside any scalar, so a
/// line-based split agrees with the parser.
fn split_documents(file: &Path, text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut first_line = 1;
    let is_marker = |l: &str, m: &str| {
        l.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
    };
    let push = |docs: &mut Vec<Doc>, cur: &mut String, first_line: usize| {
        let meaningful = cur.lines().any(|l| {
            !l.trim().is_empty()
                && !l.trim_start().starts_with('#')
                && !l.trim_start().starts_with('%')
        });
        if meaningful {
            docs.push(Doc {
                file: file.to_owned(),
                first_line,
                text: std::mem::take(cur),
            });
        }
        cur.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if is_marker(line, "---") {
            push(&mut docs, &mut cur, first_line);
            first_line = n;
            cur.push_str("   ");
            cur.push_str(line.get(3..).unwrap_or(""));
            cur.push('\n');
        } else if is_marker(line, "...") {
            push(&mut docs, &mut cur, first_line);
            first_line = n + 1;
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    push(&mut docs, &mut cur, first_line);
    docs
}

impl Doc {
    fn origin(&self) -> Origin {
        Origin {
            file: self.file.clone(),
            line: self.locate(Some("apiVersion"), None).0,
        }
    }

    /// Line and column of `key:` (first occurrence), or of `value` as a whole word on or after
    /// that line; the document start when neither is found.
    fn locate(&self, key: Option<&str>, value: Option<&str>) -> (usize, usize) {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut from = 0;
        let mut best = None;
        if let Some(k) = key {
            for (i, l) in lines.iter().enumerate() {
                if let Some(c) = find_word(l, k, true) {
                    from = i;
                    best = Some((i, c));
                    break;
                }
            }
        }
        if let Some(v) = value {
            for (i, l) in lines.iter().enumerate().skip(from) {
                if let Some(c) = find_word(l, v, false) {
                    best = Some((i, c));
                    break;
                }
            }
        }
        match best {
            Some((i, c)) => (self.first_line + i, c + 1),
            None => (self.first_line, 1),
        }
    }

    fn error(
        &self,
        at: (usize, usize),
        what: String,
        expected: impl Into<String>,
        hint: impl Into<String>,
    ) -> RuleError {
        RuleError {
            file: self.file.clone(),
            line: at.0,
            column: at.1,
            what,
            expected: expected.into(),
            hint: hint.into(),
        }
    }
}

/// Byte column of `w` in `line` bounded by non-name characters (and followed by `:` for keys).
fn find_word(line: &str, w: &str, key: bool) -> Option<usize> {
    if w.is_empty() {
        return None;
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    let mut start = 0;
    while let Some(off) = line.get(start..)?.find(w) {
        let at = start + off;
        let before_ok = line[..at].chars().next_back().is_none_or(|c| !name_char(c));
        let rest = &line[at + w.len()..];
        let after_ok = if key {
            rest.starts_with(':')
        } else {
            rest.chars()
                .next()
                .is_none_or(|c| !name_char(c) || c == '.' && w.ends_with('.'))
        };
        if before_ok && after_ok {
            return Some(line[..at].chars().count());
        }
        start = at + w.len();
    }
    None
}

fn yaml_error(doc: &Doc, e: &serde_yaml_ng::Error) -> RuleError {
    let (line, column) = match e.location() {
        Some(l) => (doc.first_line + l.line().saturating_sub(1), l.column()),
        None => (doc.first_line, 1),
    };
    let mut msg = e.to_string();
    let opened = yaml_opened_at(e, doc.first_line - 1);
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    if let Some(opened) = opened {
        // The parser's own positions count from the document, not the file: keep only the
        // problem, and say where the unclosed construct began in file lines.
        msg.truncate(msg.find(" at line ").unwrap_or(msg.len()));
        msg = format!("{msg} ({opened})");
    }
    let (what, expected) = match msg.split_once(", expected ") {
        Some((w, x)) => (w.to_owned(), x.to_owned()),
        None => (
            msg.clone(),
            "valid YAML in the shape of the rules schema".to_owned(),
        ),
    };
    let hint = if what.contains("unknown field") {
        format!("check the spelling and the indentation; keys are camelCase ({SCHEMA_HINT})")
    } else if what.contains("unknown variant") {
        "values are lowercase words such as phi or api-key, HTTP methods uppercase".to_owned()
    } else if what.contains("missing field") {
        format!("add the key ({SCHEMA_HINT})")
    } else if what.contains("invalid type") {
        "a list is written [a, b] or as `- ` items; a mapping as key: value".to_owned()
    } else {
        "the file must be valid YAML: check indentation, quotes and colons".to_owned()
    };
    RuleError {
        file: doc.file.clone(),
        line,
        column,
        what,
        expected,
        hint,
    }
}

/// Where the construct a YAML syntax error happened inside began, when that is not where the
/// parser noticed: an unclosed `[`, `{` or quote is reported at the line after it, which alone
/// sends people to the wrong line. libyaml keeps that place (its context mark); serde_yaml_ng
/// shows it only in the message ("…, while parsing a flow sequence at line 3 column 12"), so it is
/// read from there. `line_offset` is added to the line (documents after the first in a file).
pub(crate) fn yaml_opened_at(e: &serde_yaml_ng::Error, line_offset: usize) -> Option<String> {
    let msg = e.to_string();
    let (_, context) = msg.split_once(", while ")?;
    let (what, at) = context.rsplit_once(" at line ")?;
    let (line, column) = at.split_once(" column ")?;
    let line = line.parse::<usize>().ok()? + line_offset;
    let column: usize = column.parse().ok()?;
    let thing = what
        .trim_start_matches("parsing ")
        .trim_start_matches("scanning ")
        .trim_start_matches("a ")
        .trim_start_matches("an ");
    let opener = match thing {
        "flow sequence" => "the `[`",
        "flow mapping" => "the `{`",
        "quoted scalar" => "the quote",
        _ => {
            return Some(format!(
                "in the {thing} that begins at line {line} column {column}"
            ))
        }
    };
    Some(format!(
        "{opener} opened at line {line} column {column} is not closed"
    ))
}

/// Distinct globs of all rules files together. Each is compiled into a regex with a DFA of up
/// to ~40 KB (~20 KB measured on average): 4,096 bound them to ~100 MB, where 1 MiB of one-line
/// secret paths alone would have asked for gigabytes.
pub const MAX_GLOBS: usize = 4096;

/// Audiences one data source may declare, and the length of one: tokens keep at most 16
/// audiences of 256 characters (`protocol::credentials::MAX_AUD`, `MAX_CLAIM_CHARS`).
const MAX_AUDIENCES: usize = 64;
const MAX_AUDIENCE_CHARS: usize = 256;

/// `credentials.maxKeyAge`: ages are counted in whole days, and a key older than ten years
/// is not a rotation schedule.
const MIN_KEY_AGE: std::time::Duration = std::time::Duration::from_secs(86_400);
const MAX_KEY_AGE: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// The first document at which the distinct globs (paths, files, wildcard hosts, secret paths,
/// destinations) pass [`MAX_GLOBS`], before any is compiled.
fn too_many_globs(
    sources: &[(Doc, Document<DataSourceSpec>)],
    contracts: &[(Doc, Document<AccessContractSpec>)],
) -> Option<RuleError> {
    let mut seen: std::collections::HashSet<(GlobKind, &str)> = Default::default();
    let wild = |h: &str| h.contains(['*', '?', '[', ']', '{', '}', ',', '!', '\\']);
    let over = |doc: &Doc, seen: usize| {
        (seen > MAX_GLOBS).then(|| {
            doc.error(
                (doc.first_line, 1),
                format!("the rules hold more than {MAX_GLOBS} distinct globs"),
                format!("at most {MAX_GLOBS} distinct path, file, host, secret and destination globs in all rules files"),
                "each compiled glob costs ~20 KB in the daemon; use fewer, wider globs",
            )
        })
    };
    for (doc, d) in sources {
        for m in &d.spec.matchers {
            if let Some(h) = m.host.as_deref().filter(|h| wild(h)) {
                seen.insert((GlobKind::Host, h));
            }
            for p in m.paths.iter().flatten() {
                seen.insert((GlobKind::Path, p));
            }
            if let Some(f) = &m.file {
                seen.insert((GlobKind::File, f));
            }
        }
        if let Some(e) = over(doc, seen.len()) {
            return Some(e);
        }
    }
    for (doc, c) in contracts {
        for sec in &c.spec.allow.secrets {
            seen.insert((GlobKind::File, &sec.path));
        }
        for d in &c.spec.allow.destinations {
            seen.insert((GlobKind::Host, &d.host));
        }
        for g in &c.spec.allow.scopes {
            for sc in &g.scopes {
                seen.insert((GlobKind::File, sc));
            }
        }
        if let Some(e) = over(doc, seen.len()) {
            return Some(e);
        }
    }
    None
}

/// Which compiler a glob went through, part of the key under which it is shared.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum GlobKind {
    File,
    Path,
    Host,
}

#[derive(Default)]
struct Loader {
    /// Each distinct glob is compiled once and shared (clones share the compiled automaton):
    /// a compiled glob is a regex with a full DFA of up to ~40 KB, and most data sources repeat
    /// the same few (`/**` for every host without paths).
    globs: HashMap<(GlobKind, String), GlobMatcher>,
    errors: Vec<RuleError>,
    warnings: Vec<RuleError>,
    sources: Vec<(Doc, Document<DataSourceSpec>)>,
    contracts: Vec<(Doc, Document<AccessContractSpec>)>,
}

fn typed<T: DeserializeOwned>(doc: &Doc) -> Result<T, RuleError> {
    serde_yaml_ng::from_str(&doc.text).map_err(|e| yaml_error(doc, &e))
}

/// A contract's version: a digest of its document, so a finding names exactly the text that decided.
fn version_of(text: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(text.trim().as_bytes());
    let hex: String = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

fn glob(p: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(p)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

/// Request paths are matched by prefix-style globs as people write them (`/R4/Patient*` covers
/// `/R4/Patient/{id}`), so `*` crosses `/` here, unlike in file paths.
fn path_glob(p: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(p)
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

fn host_glob(p: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(&p.to_ascii_lowercase())
        .case_insensitive(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.kind().to_string())
}

impl Loader {
    fn glob(&mut self, kind: GlobKind, p: &str) -> Result<GlobMatcher, String> {
        if let Some(g) = self.globs.get(&(kind, p.to_owned())) {
            return Ok(g.clone());
        }
        let g = match kind {
            GlobKind::File => glob(p),
            GlobKind::Path => path_glob(p),
            GlobKind::Host => host_glob(p),
        }?;
        self.globs.insert((kind, p.to_owned()), g.clone());
        Ok(g)
    }

    fn parse(&mut self, doc: Doc) {
        let header: Header = match typed(&doc) {
            Ok(h) => h,
            Err(e) => return self.errors.push(e),
        };
        match header.api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(v) => {
                let at = doc.locate(Some("apiVersion"), None);
                return self.errors.push(doc.error(
                    at,
                    format!("apiVersion {v:?} is not supported"),
                    format!("apiVersion: {API_VERSION}"),
                    "this nhiwatch reads only v1 rules",
                ));
            }
            None => {
                let at = doc.locate(None, None);
                return self.errors.push(doc.error(
                    at,
                    "the document has no apiVersion".into(),
                    format!("apiVersion: {API_VERSION}"),
                    "start every document with apiVersion and kind",
                ));
            }
        }
        match header.kind.as_deref() {
            Some("DataSource") => match typed(&doc) {
                Ok(d) => self.sources.push((doc, d)),
                Err(e) => self.errors.push(e),
            },
            Some("AccessContract") => match typed(&doc) {
                Ok(d) => self.contracts.push((doc, d)),
                Err(e) => self.errors.push(e),
            },
            other => {
                let at = doc.locate(Some("kind"), None);
                let what = match other {
                    Some(k) => format!("unknown kind {k:?}"),
                    None => "the document has no kind".into(),
                };
                self.errors.push(doc.error(
                    at,
                    what,
                    "kind: DataSource or kind: AccessContract",
                    "kinds are case-sensitive",
                ));
            }
        }
    }

    fn check_name<'a>(
        &mut self,
        doc: &Doc,
        name: &'a str,
        kind: &str,
        seen: &mut BTreeMap<&'a str, Origin>,
    ) {
        if !valid_name(name) {
            let at = doc.locate(Some("name"), None);
            self.errors.push(doc.error(
                at,
                format!("{kind} name {name:?} is not a valid name"),
                "1-63 lowercase letters, digits and '-'",
                "names are referenced from contracts; e.g. ehr-medications",
            ));
        } else if let Some(first) = seen.get(name) {
            let at = doc.locate(Some("name"), Some(name));
            self.errors.push(doc.error(
                at,
                format!("duplicate {kind} name {name:?}"),
                format!("a name unique among {kind}s"),
                format!(
                    "first defined at {}:{}; rename one of them",
                    first.file.display(),
                    first.line
                ),
            ));
        } else {
            seen.insert(name, doc.origin());
        }
    }

    fn finish(mut self) -> Result<RuleSet, Vec<RuleError>> {
        let sources = std::mem::take(&mut self.sources);
        let contracts = std::mem::take(&mut self.contracts);
        let mut set = RuleSet::default();
        if let Some(e) = too_many_globs(&sources, &contracts) {
            self.errors.push(e);
            return Err(self.errors);
        }

        let mut seen = BTreeMap::new();
        for (doc, d) in &sources {
            self.check_name(doc, &d.metadata.name, "DataSource", &mut seen);
            if let Some(ds) = self.data_source(doc, d) {
                set.data_sources.push(ds);
            }
        }
        self.overlaps(&sources);

        let known: BTreeMap<&str, ()> = sources
            .iter()
            .map(|(_, d)| (d.metadata.name.as_str(), ()))
            .collect();
        let mut seen = BTreeMap::new();
        for (doc, c) in &contracts {
            self.check_name(doc, &c.metadata.name, "AccessContract", &mut seen);
            if let Some(ac) = self.contract(doc, c, &known) {
                set.contracts.push(ac);
            }
        }
        // The rule set holds its own clones; the cache's are dropped with the loader.
        self.globs = HashMap::new();
        if self.errors.is_empty() {
            set.warnings = std::mem::take(&mut self.warnings);
            Ok(set)
        } else {
            Err(self.errors)
        }
    }

    fn data_source(&mut self, doc: &Doc, d: &Document<DataSourceSpec>) -> Option<DataSource> {
        let before = self.errors.len();
        let mut matchers = Vec::new();
        if d.spec.matchers.is_empty() {
            let at = doc.locate(Some("match"), None);
            self.errors.push(doc.error(
                at,
                "a data source with no matchers".into(),
                "at least one {host, paths} or {file} entry",
                "an empty data source can never be touched; remove it or add a matcher",
            ));
        }
        for m in &d.spec.matchers {
            match (&m.host, &m.file) {
                (Some(host), None) => {
                    let literal = !host.contains(['*', '?', '[', ']', '{', '}', ',', '!', '\\']);
                    // A plain host name cannot be a bad pattern: nothing to compile.
                    let compiled = if literal {
                        Ok(None)
                    } else {
                        self.glob(GlobKind::Host, host).map(Some)
                    };
                    let host_glob = match compiled {
                        Ok(g) => Some(g),
                        Err(e) => {
                            let at = doc.locate(Some("host"), Some(host));
                            self.errors.push(doc.error(
                                at,
                                format!("bad host pattern {host:?}: {e}"),
                                "a host name, optionally with * wildcards",
                                "e.g. fhir.ehr.example.org or *.openai.com",
                            ));
                            None
                        }
                    };
                    let mut paths = Vec::new();
                    for p in m.paths.as_deref().unwrap_or(&[]) {
                        let at = || doc.locate(Some("paths"), Some(p));
                        if !p.starts_with('/') {
                            self.errors.push(doc.error(
                                at(),
                                format!("path {p:?} does not start with /"),
                                "an absolute URL path glob such as /R4/Patient*",
                                "paths are matched against the request path without the host",
                            ));
                            continue;
                        }
                        match self.glob(GlobKind::Path, p) {
                            Ok(g) => paths.push(g),
                            Err(e) => self.errors.push(doc.error(
                                at(),
                                format!("bad path glob {p:?}: {e}"),
                                "a glob with *, ** or {a,b}",
                                "close every [ and {",
                            )),
                        }
                    }
                    if m.paths.as_ref().is_some_and(|p| p.is_empty()) {
                        let at = doc.locate(Some("paths"), None);
                        self.errors.push(doc.error(
                            at,
                            "an empty paths list".into(),
                            "at least one path glob",
                            "leave paths out to match every path of the host",
                        ));
                    }
                    if m.paths.is_none() {
                        paths.push(self.glob(GlobKind::File, "/**").ok()?);
                    }
                    if let Some(host_glob) = host_glob {
                        matchers.push(Matcher::Http {
                            host: host.to_ascii_lowercase(),
                            host_glob,
                            paths,
                        });
                    }
                }
                (None, Some(file)) => {
                    let at = || doc.locate(Some("file"), Some(file));
                    if m.paths.is_some() {
                        let at = doc.locate(Some("paths"), None);
                        self.errors.push(doc.error(
                            at,
                            "paths given with file".into(),
                            "paths only with host",
                            "a file matcher is one glob: file: /srv/exports/**",
                        ));
                    }
                    if !file.starts_with('/') {
                        self.errors.push(doc.error(
                            at(),
                            format!("file glob {file:?} is not absolute"),
                            "an absolute path glob",
                            "~ is not expanded: write /root/.aws/** and /home/*/.aws/**",
                        ));
                        continue;
                    }
                    match self.glob(GlobKind::File, file) {
                        Ok(glob) => matchers.push(Matcher::File { glob }),
                        Err(e) => self.errors.push(doc.error(
                            at(),
                            format!("bad file glob {file:?}: {e}"),
                            "a glob with *, ** or {a,b}",
                            "close every [ and {",
                        )),
                    }
                }
                (Some(_), Some(_)) => {
                    let at = doc.locate(Some("file"), None);
                    self.errors.push(doc.error(
                        at,
                        "a matcher with both host and file".into(),
                        "either {host, paths} or {file}",
                        "split it into two list entries",
                    ));
                }
                (None, None) => {
                    let at = doc.locate(Some("match"), None);
                    self.errors.push(doc.error(
                        at,
                        "a matcher with neither host nor file".into(),
                        "either {host, paths} or {file}",
                        "e.g. - host: api.example.org",
                    ));
                }
            }
        }
        if d.spec.audiences.len() > MAX_AUDIENCES {
            let at = doc.locate(Some("audiences"), None);
            self.errors.push(doc.error(
                at,
                format!(
                    "{} audiences, more than the limit of {MAX_AUDIENCES}",
                    d.spec.audiences.len()
                ),
                format!("at most {MAX_AUDIENCES} audiences per data source"),
                "list the audiences the API's tokens are minted for, not every client",
            ));
        }
        for a in &d.spec.audiences {
            let bad = if a.trim().is_empty() {
                Some("an empty audience".to_owned())
            } else if a.chars().count() > MAX_AUDIENCE_CHARS {
                Some(format!(
                    "audience {:?}… is longer than {MAX_AUDIENCE_CHARS} characters",
                    a.chars().take(32).collect::<String>()
                ))
            } else {
                None
            };
            if let Some(what) = bad {
                let at = doc.locate(Some("audiences"), None);
                self.errors.push(doc.error(
                    at,
                    what,
                    "an audience a token for this API carries in `aud`",
                    "e.g. audiences: [\"api://ehr-prod\", \"0c6a1f3e-client-id\"]",
                ));
            }
        }
        (self.errors.len() == before).then(|| DataSource {
            name: d.metadata.name.clone(),
            classification: d.spec.classification,
            matchers,
            audiences: d.spec.audiences.clone(),
            origin: doc.origin(),
        })
    }

    /// Matchers of two different data sources must not claim the same request or file, or an
    /// access could not be attributed to one source.
    fn overlaps(&mut self, sources: &[(Doc, Document<DataSourceSpec>)]) {
        // Two globs overlap when equal or when one matches the other's text read literally
        // (`/R4/Medication*` and `/R4/MedicationRequest*`): a cheap, conservative approximation
        // that can miss overlaps of differently-wildcarded globs such as `/a/*x` and `/a/y*`.
        // Each glob is compiled once: pairs are quadratic, regex compilation is not cheap.
        let mut compiled: HashMap<(bool, String), Option<GlobMatcher>> = HashMap::new();
        let mut overlap = |path: bool, a: &str, b: &str| -> bool {
            if a == b {
                return true;
            }
            let mut m = |g: &str, text: &str| {
                compiled
                    .entry((path, g.to_owned()))
                    .or_insert_with(|| {
                        if path {
                            path_glob(g).ok()
                        } else {
                            glob(g).ok()
                        }
                    })
                    .as_ref()
                    .is_some_and(|m| m.is_match(text))
            };
            m(a, b) || m(b, a)
        };
        // Only sources that share a host (any case) or both match files can clash: pairing those
        // alone keeps thousands of single-host sources linear instead of quadratic.
        let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
        let mut with_files = Vec::new();
        for (k, (_, d)) in sources.iter().enumerate() {
            for m in &d.spec.matchers {
                if let Some(h) = &m.host {
                    by_host.entry(h.to_ascii_lowercase()).or_default().push(k);
                }
            }
            if d.spec.matchers.iter().any(|m| m.file.is_some()) {
                with_files.push(k);
            }
        }
        for (j, (doc_b, b)) in sources.iter().enumerate() {
            let mut candidates: Vec<usize> = b
                .spec
                .matchers
                .iter()
                .filter_map(|m| m.host.as_ref())
                .flat_map(|h| by_host.get(&h.to_ascii_lowercase()).into_iter().flatten())
                .copied()
                .chain(
                    with_files
                        .iter()
                        .copied()
                        .filter(|_| b.spec.matchers.iter().any(|m| m.file.is_some())),
                )
                .filter(|&i| i < j)
                .collect();
            candidates.sort_unstable();
            candidates.dedup();
            for (doc_a, a) in candidates.into_iter().map(|i| &sources[i]) {
                if a.metadata.name == b.metadata.name {
                    continue;
                }
                'pairs: for mb in &b.spec.matchers {
                    for ma in &a.spec.matchers {
                        let clash = match (ma, mb) {
                            (
                                schema::MatcherSpec {
                                    host: Some(ha),
                                    paths: pa,
                                    ..
                                },
                                schema::MatcherSpec {
                                    host: Some(hb),
                                    paths: pb,
                                    ..
                                },
                            ) if ha.eq_ignore_ascii_case(hb) => {
                                let all = ["/**".to_owned()];
                                let pa = pa.as_deref().unwrap_or(&all);
                                let pb = pb.as_deref().unwrap_or(&all);
                                pb.iter().find_map(|x| {
                                    pa.iter()
                                        .find(|y| overlap(true, x, y))
                                        .map(|y| (x.clone(), y.clone(), format!("host {hb}")))
                                })
                            }
                            (
                                schema::MatcherSpec { file: Some(fa), .. },
                                schema::MatcherSpec { file: Some(fb), .. },
                            ) => overlap(false, fa, fb)
                                .then(|| (fb.clone(), fa.clone(), "files".to_owned())),
                            _ => None,
                        };
                        if let Some((mine, theirs, scope)) = clash {
                            let at = match (&mb.file, &mb.host, &mb.paths) {
                                (Some(_), _, _) => doc_b.locate(Some("file"), Some(&mine)),
                                (None, _, Some(_)) => doc_b.locate(Some("paths"), Some(&mine)),
                                // No paths: the whole host is claimed, so point at the host.
                                (None, host, None) => doc_b.locate(Some("host"), host.as_deref()),
                            };
                            self.errors.push(doc_b.error(
                                at,
                                format!("data source {:?} matches {mine:?} on {scope}, which overlaps {theirs:?} of data source {:?}", b.metadata.name, a.metadata.name),
                                "each request or file to belong to one data source",
                                format!("{:?} is defined at {}:{}; narrow one of the globs or merge the two sources", a.metadata.name, doc_a.file.display(), doc_a.origin().line),
                            ));
                            break 'pairs;
                        }
                    }
                }
            }
        }
    }

    fn contract(
        &mut self,
        doc: &Doc,
        c: &Document<AccessContractSpec>,
        known: &BTreeMap<&str, ()>,
    ) -> Option<AccessContract> {
        let before = self.errors.len();
        let s = &c.spec;
        let name = &c.metadata.name;
        let subject = match (&s.identity, &s.selectors) {
            (Some(_), Some(_)) => {
                let at = doc.locate(Some("selectors"), None);
                self.errors.push(doc.error(
                    at,
                    "both identity and selectors are given".into(),
                    "exactly one of identity or selectors",
                    "keep identity for one SPIFFE ID, selectors for a group of workloads",
                ));
                None
            }
            (None, None) => {
                let at = doc.locate(Some("spec"), None);
                self.errors.push(doc.error(
                    at,
                    format!("contract {name:?} names no identity"),
                    "identity: spiffe://… or selectors: [k8s:ns:…]",
                    "a contract must say whom it governs",
                ));
                None
            }
            (Some(id), None) => {
                let ok = id
                    .strip_prefix("spiffe://")
                    .is_some_and(|r| r.split('/').next().is_some_and(|td| !td.is_empty()));
                if ok {
                    Some(Subject::Identity(id.clone()))
                } else {
                    let at = doc.locate(Some("identity"), None);
                    self.errors.push(doc.error(
                        at,
                        format!("identity {id:?} is not a SPIFFE ID"),
                        "spiffe://TRUST-DOMAIN/PATH",
                        "e.g. spiffe://clinic.example/ns/clinical-ai/sa/med-summarizer",
                    ));
                    None
                }
            }
            (None, Some(sel)) => {
                match SelectorRule::parse(sel, &format!("spiffe://nhiwatch.contract/{name}")) {
                    Ok(r) => Some(Subject::Selectors(r)),
                    Err(e) => {
                        let bad = sel
                            .iter()
                            .find(|x| crate::identity::selectors::Selector::parse(x).is_err());
                        let at = doc.locate(Some("selectors"), bad.map(String::as_str));
                        self.errors.push(doc.error(
                            at,
                            format!("bad selectors: {e}"),
                            "TYPE:KEY:VALUE selectors, all of which must match",
                            "e.g. [k8s:ns:clinical-ai, k8s:sa:med-summarizer]",
                        ));
                        None
                    }
                }
            }
        };
        // Not an error: an ownerless contract still governs, and its activity is a finding
        // (NHI-003) until someone takes ownership.
        if s.owner.trim().is_empty() {
            let at = doc.locate(Some("owner"), Some("spec"));
            self.warnings.push(doc.error(
                at,
                format!("contract {name:?} has no owner"),
                "a team or person to ask, e.g. an e-mail address",
                "every identity needs someone accountable for it; its activity is reported as NHI-003 until then",
            ));
        }
        if s.purpose.trim().is_empty() {
            let at = doc.locate(Some("purpose"), None);
            self.errors.push(doc.error(
                at,
                format!("contract {name:?} has an empty purpose"),
                "one sentence saying why the identity needs this access",
                "reviewers judge grants against the purpose",
            ));
        }
        let expires = s.expires.as_deref().and_then(|e| {
            let d = values::parse_date(e);
            if d.is_none() {
                let at = doc.locate(Some("expires"), None);
                self.errors.push(doc.error(
                    at,
                    format!("bad date {e:?}"),
                    "a date YYYY-MM-DD",
                    "e.g. expires: 2027-03-31",
                ));
            }
            d
        });

        let unknown = |this: &mut Self, key: &str, ds: &str| {
            if !known.contains_key(ds) {
                let at = doc.locate(Some(key), Some(ds));
                let names: Vec<&str> = known.keys().copied().take(12).collect();
                this.errors.push(doc.error(
                    at,
                    format!("unknown data source {ds:?}"),
                    "the name of a DataSource defined in the rules",
                    format!(
                        "known data sources: {}",
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
                false
            } else {
                true
            }
        };
        let a = &s.allow;
        for ds in &a.data_sources {
            unknown(self, "dataSources", ds);
        }
        let granted = |ds: &str| a.data_sources.iter().any(|g| g == ds);
        for combo in &a.combinations {
            if combo.len() < 2 {
                let at = doc.locate(Some("combinations"), None);
                self.errors.push(doc.error(
                    at,
                    "a combination with fewer than two data sources".into(),
                    "a list of two or more data sources used together",
                    "one data source alone is granted by allow.dataSources",
                ));
            }
            for ds in combo {
                if unknown(self, "combinations", ds) && !granted(ds) {
                    let at = doc.locate(Some("combinations"), Some(ds));
                    self.errors.push(doc.error(
                        at,
                        format!("combination names {ds:?}, which allow.dataSources does not grant"),
                        "combinations of granted data sources only",
                        format!("add {ds} to allow.dataSources or drop it here"),
                    ));
                }
            }
        }
        for e in &a.endpoints {
            if unknown(self, "endpoints", &e.data_source) && !granted(&e.data_source) {
                let at = doc.locate(Some("endpoints"), Some(&e.data_source));
                self.errors.push(doc.error(
                    at,
                    format!(
                        "endpoint rule for {:?}, which allow.dataSources does not grant",
                        e.data_source
                    ),
                    "endpoint rules for granted data sources only",
                    format!("add {} to allow.dataSources", e.data_source),
                ));
            }
            if e.methods.is_empty() {
                let at = doc.locate(Some("methods"), None);
                self.errors.push(doc.error(
                    at,
                    "an empty methods list".into(),
                    "one or more of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
                    "to forbid a data source, leave it out of allow.dataSources",
                ));
            }
        }
        let mut secrets = Vec::new();
        for sec in &a.secrets {
            let at = || doc.locate(Some("path"), Some(&sec.path));
            match self.glob(GlobKind::File, &sec.path) {
                Ok(g) if sec.path.starts_with('/') => secrets.push(SecretGrant {
                    path: g,
                    executables: sec.executables.clone(),
                }),
                Ok(_) => self.errors.push(doc.error(
                    at(),
                    format!("secret path {:?} is not absolute", sec.path),
                    "an absolute path glob",
                    "e.g. /var/run/secrets/kubernetes.io/serviceaccount/token",
                )),
                Err(e) => self.errors.push(doc.error(
                    at(),
                    format!("bad secret path glob {:?}: {e}", sec.path),
                    "a glob with *, ** or {a,b}",
                    "close every [ and {",
                )),
            }
            for x in sec.executables.iter().filter(|x| !x.starts_with('/')) {
                let at = doc.locate(Some("executables"), Some(x));
                self.errors.push(doc.error(
                    at,
                    format!("executable {x:?} is not an absolute path"),
                    "the absolute path of the program, as the kernel sees it",
                    "e.g. /usr/local/bin/summarizer",
                ));
            }
        }
        let mut destinations = Vec::new();
        for d in &a.destinations {
            match self.glob(GlobKind::Host, &d.host) {
                Ok(g) if !d.host.trim().is_empty() => destinations.push(g),
                Ok(_) => {
                    let at = doc.locate(Some("destinations"), None);
                    self.errors.push(doc.error(
                        at,
                        "an empty destination host".into(),
                        "a host name or glob",
                        "e.g. \"*.svc.cluster.local\"",
                    ));
                }
                Err(e) => {
                    let at = doc.locate(Some("host"), Some(&d.host));
                    self.errors.push(doc.error(
                        at,
                        format!("bad destination host glob {:?}: {e}", d.host),
                        "a host name or glob",
                        "e.g. \"*.svc.cluster.local\" (quote globs that start with *)",
                    ));
                }
            }
        }
        let max_token_ttl = s.credentials.max_token_ttl.as_deref().and_then(|t| {
            let d = values::parse_duration(t);
            if d.is_none() {
                let at = doc.locate(Some("maxTokenTtl"), None);
                self.errors.push(doc.error(
                    at,
                    format!("bad duration {t:?}"),
                    "a positive duration such as 15m, 1h or 1h30m",
                    "units: s, m, h, d",
                ));
            }
            d
        });
        let max_key_age = s.credentials.max_key_age.as_deref().and_then(|t| {
            let d = values::parse_duration(t).filter(|d| (MIN_KEY_AGE..=MAX_KEY_AGE).contains(d));
            if d.is_none() {
                let at = doc.locate(Some("maxKeyAge"), None);
                self.errors.push(doc.error(
                    at,
                    format!("bad key age {t:?}"),
                    "a duration from 1d to 3650d, such as 90d",
                    "the age of a static key is counted in days since nhiwatch first saw it",
                ));
            }
            d
        });
        let mut scopes = Vec::new();
        for g in &a.scopes {
            if unknown(self, "scopes", &g.data_source) && !granted(&g.data_source) {
                let at = doc.locate(Some("scopes"), Some(&g.data_source));
                self.errors.push(doc.error(
                    at,
                    format!(
                        "scopes for {:?}, which allow.dataSources does not grant",
                        g.data_source
                    ),
                    "scopes for granted data sources only",
                    format!("add {} to allow.dataSources", g.data_source),
                ));
            }
            if g.scopes.is_empty() {
                let at = doc.locate(Some("scopes"), Some(&g.data_source));
                self.errors.push(doc.error(
                    at,
                    "an empty scopes list".into(),
                    "one or more scope globs such as patient/*.read",
                    "leave the data source out of allow.scopes to not judge its scopes",
                ));
            }
            let mut globs = Vec::new();
            for sc in &g.scopes {
                match self.glob(GlobKind::File, sc) {
                    Ok(m) if !sc.trim().is_empty() => globs.push(m),
                    Ok(_) => {
                        let at = doc.locate(Some("scopes"), Some(&g.data_source));
                        self.errors.push(doc.error(
                            at,
                            "an empty scope".into(),
                            "a scope or scope glob such as patient/*.read",
                            "remove the empty entry",
                        ));
                    }
                    Err(e) => {
                        let at = doc.locate(Some("scopes"), Some(sc));
                        self.errors.push(doc.error(
                            at,
                            format!("bad scope glob {sc:?}: {e}"),
                            "a scope or glob with * (not crossing /) and {a,b}",
                            "close every [ and {",
                        ));
                    }
                }
            }
            scopes.push(ScopeGrant {
                data_source: g.data_source.clone(),
                scopes: g.scopes.clone(),
                globs,
            });
        }
        let mut limits = Vec::new();
        for l in &s.limits {
            unknown(self, "limits", &l.data_source);
            if l.requests_per_minute.is_none() && l.bytes_per_hour.is_none() {
                let at = doc.locate(Some("limits"), Some(&l.data_source));
                self.errors.push(doc.error(
                    at,
                    format!("limit for {:?} sets nothing", l.data_source),
                    "requestsPerMinute and/or bytesPerHour",
                    "remove the entry or set a limit",
                ));
            }
            if l.requests_per_minute == Some(0) {
                let at = doc.locate(Some("requestsPerMinute"), None);
                self.errors.push(doc.error(
                    at,
                    "requestsPerMinute is 0".into(),
                    "a positive number",
                    "to forbid a data source, leave it out of allow.dataSources",
                ));
            }
            let bytes = l.bytes_per_hour.as_deref().and_then(|b| {
                let v = values::parse_size(b);
                if v.is_none() {
                    let at = doc.locate(Some("bytesPerHour"), Some(b));
                    self.errors.push(doc.error(
                        at,
                        format!("bad size {b:?}"),
                        "a positive size such as 500KiB, 50MiB or 2GB",
                        "units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (case-sensitive)",
                    ));
                }
                v
            });
            limits.push(Limit {
                data_source: l.data_source.clone(),
                requests_per_minute: l.requests_per_minute,
                bytes_per_hour: bytes,
            });
        }
        if self.errors.len() != before {
            return None;
        }
        Some(AccessContract {
            name: name.clone(),
            subject: subject?,
            owner: s.owner.trim().to_owned(),
            version: version_of(&doc.text),
            purpose: s.purpose.clone(),
            expires,
            allow: Allow {
                data_sources: a.data_sources.clone(),
                combinations: a.combinations.clone(),
                endpoints: a
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        data_source: e.data_source.clone(),
                        methods: e.methods.clone(),
                    })
                    .collect(),
                secrets,
                destinations,
                scopes,
            },
            credentials: CredentialPolicy {
                kinds: s.credentials.kinds.clone(),
                max_token_ttl,
                shared: s.credentials.shared,
                require_audience: s.credentials.require_audience,
                max_key_age,
            },
            limits,
            break_glass: s.break_glass,
            origin: doc.origin(),
        })
    }
}
