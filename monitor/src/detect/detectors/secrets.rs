//! Secrets: takes a watched file opened, its data source and the contract's `secrets` grant covering it, gives NHI-020 (secret read without a grant) and NHI-021 (secret read by an executable the grant does not name).

use super::{Cx, FileRead, Seen, Subject};
use crate::detect::finding::{Evidence, Rule};

#[inline(always)]
pub(in crate::detect) fn detect(cx: &mut Cx<'_>, id: &mut Subject<'_>, seen: &Seen<'_>) {
    if let Some(f) = &seen.file {
        judge(cx, id.contract, f);
    }
}

fn judge(cx: &mut Cx<'_>, contract: Option<usize>, f: &FileRead<'_>) {
    let (who, path, exe) = (cx.who(), f.path, f.exe);
    let exe_s = exe.unwrap_or("?");
    let rules = cx.rules;
    let c = cx.contract(contract);
    let data_source = || f.ds.map(|d| rules.ds_name(d).to_owned());
    if let Some((_, exes)) = f.grant.and_then(|g| c.and_then(|c| c.secrets.get(g))) {
        let fresh = if !exes.is_empty() && !exes.iter().any(|e| Some(e.as_str()) == exe) {
            cx.fresh(Rule::SecretReadUnexpectedExecutable, &[path, "\0", exe_s])
        } else {
            None
        };
        if let Some(fresh) = fresh {
            let allowed = exes.clone();
            cx.open(
                fresh,
                format!(
                    "{exe_s} read {path} as {who}; the contract allows only {}",
                    allowed.join(", ")
                ),
                contract,
                Evidence {
                    file: Some(path.to_owned()),
                    executable: Some(exe_s.to_owned()),
                    allowed,
                    data_source: data_source(),
                    ..Evidence::default()
                },
            );
        }
        return;
    }
    // A file of an allowed data source is allowed to any executable of the identity; `secrets`
    // grants are what restrict by executable. Data files are secrets only when they hold
    // credentials (or belong to no data source: then they are watched because they are
    // secrets). Ungoverned identities reading data files are covered by NHI-001.
    let data_access = f.ds.is_some_and(|d| !cx.holds_credentials(d));
    let allowed = matches!((f.ds, c), (Some(d), Some(c)) if c.is_allowed(d));
    let fresh = if !allowed && !data_access {
        cx.fresh(Rule::SecretReadNotAllowed, &[path, "\0", exe_s])
    } else {
        None
    };
    if let Some(fresh) = fresh {
        let what = if c.is_some() {
            "its contract grants no such secret"
        } else {
            "no contract governs it"
        };
        cx.open(
            fresh,
            format!("{exe_s} read secret {path} as {who}; {what}"),
            contract,
            Evidence {
                file: Some(path.to_owned()),
                executable: Some(exe_s.to_owned()),
                data_source: data_source(),
                ..Evidence::default()
            },
        );
    }
}
