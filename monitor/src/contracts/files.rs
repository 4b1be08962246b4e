//! Which files a set of rules paths names: takes files and directories, gives the rules files to read in order and why a path could not be listed; the one listing the loader, the watcher and `nhiwatch check` share.

use std::path::{Path, PathBuf};

use super::RuleError;

/// The rules files named by some paths, in reading order, and the paths that could not be listed.
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<PathBuf>,
    pub errors: Vec<RuleError>,
}

/// Lists the rules files `paths` name. A path that is not a directory is a rules file as it is
/// (any name; reading it reports what is wrong). A directory gives its entries named `*.yaml` or
/// `*.yml` that are regular files once symlinks are resolved, sorted by name, and nothing below
/// it: subdirectories and symlinks to directories are never entered, so a link loop (`dot -> .`,
/// `self -> ../dir`) or a deep tree cannot make the listing loop or grow. Symlinked files are read,
/// because a Kubernetes ConfigMap mounts every key as one. A directory without such files, or
/// that cannot be read, is an error.
pub fn rules_files(paths: &[PathBuf]) -> Listing {
    let mut out = Listing::default();
    for p in paths {
        if !p.is_dir() {
            out.files.push(p.clone());
            continue;
        }
        let entries = match std::fs::read_dir(p) {
            Ok(e) => e,
            Err(e) => {
                out.errors.push(io_error(
                    p,
                    format!("cannot read directory: {e}"),
                    "check the path and its permissions",
                ));
                continue;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                matches!(f.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
                    && f.is_file()
            })
            .collect();
        files.sort();
        if files.is_empty() {
            out.errors.push(io_error(
                p,
                "no *.yaml or *.yml files in this directory".into(),
                "rules files need a .yaml or .yml extension",
            ));
        }
        out.files.extend(files);
    }
    out
}

/// A rules path that cannot be listed or read, reported at its first line like any rules error.
pub(super) fn io_error(p: &Path, what: String, hint: &str) -> RuleError {
    RuleError {
        file: p.to_owned(),
        line: 1,
        column: 1,
        what,
        expected: "a readable rules file or directory".into(),
        hint: hint.into(),
    }
}
