//! Access: takes a file read, a host reached or an API call with the data source it belongs to, gives NHI-010 (data source not allowed), NHI-011 (method not declared for the data source) and NHI-012 (destination not allowed).

use super::{class_name, Call, Cx, FileRead, Seen, Subject};
use crate::detect::{
    compiled::method_matches,
    finding::{Evidence, Rule},
};

#[inline(always)]
pub(in crate::detect) fn detect(cx: &mut Cx<'_>, id: &mut Subject<'_>, seen: &Seen<'_>) {
    if let Some(f) = &seen.file {
        file(cx, id.contract, f);
    }
    if let Some(host) = seen.destination {
        destination(cx, id.contract, host);
    }
    if let Some(c) = &seen.call {
        call(cx, id.contract, c);
    }
}

/// A file of a data source the contract does not allow. Files a `secrets` grant covers are
/// judged by the grant (NHI-021) instead.
fn file(cx: &mut Cx<'_>, contract: Option<usize>, f: &FileRead<'_>) {
    let Some(c) = cx.contract(contract) else {
        return;
    };
    let (Some(d), None) = (f.ds, f.grant.and_then(|g| c.secrets.get(g))) else {
        return;
    };
    if c.is_allowed(d) {
        return;
    }
    let rules = cx.rules;
    let Some(fresh) = cx.fresh(Rule::UndeclaredDataSource, &[rules.ds_name(d)]) else {
        return;
    };
    let (who, path) = (cx.who(), f.path);
    let name = rules.ds_name(d).to_owned();
    cx.open(
        fresh,
        format!("{who} read {path} of data source {name}, which its contract does not allow"),
        contract,
        Evidence {
            data_source: Some(name),
            classification: rules.classification(d).map(class_name),
            file: Some(path.to_owned()),
            executable: Some(f.exe.unwrap_or("?").to_owned()),
            ..Evidence::default()
        },
    );
}

fn destination(cx: &mut Cx<'_>, contract: Option<usize>, host: &str) {
    let Some((i, c)) = contract.and_then(|i| Some((i, cx.contract(Some(i))?))) else {
        return;
    };
    if cx.host_allowed(i, c, host) {
        return;
    }
    if let Some(f) = cx.fresh(Rule::UndeclaredDestination, &[host]) {
        let who = cx.who();
        cx.open(
            f,
            format!("{who} reached {host}, which its contract does not allow"),
            contract,
            Evidence {
                destination: Some(host.to_owned()),
                ..Evidence::default()
            },
        );
    }
}

fn call(cx: &mut Cx<'_>, contract: Option<usize>, call: &Call<'_>) {
    let Some(c) = cx.contract(contract) else {
        return;
    };
    let (who, host, ds, method) = (cx.who(), call.host, call.ds, call.method);
    let path = &call.call.path;
    let name = cx.rules.ds_name(ds);
    if !c.is_allowed(ds) {
        let Some(f) = cx.fresh(Rule::UndeclaredDataSource, &[name]) else {
            return;
        };
        cx.open(
            f,
            format!("{who} called {method} {host}{path} of data source {name}, which its contract does not allow"),
            contract,
            Evidence {
                data_source: Some(name.to_owned()),
                classification: cx.rules.classification(ds).map(class_name),
                method: call.call.method.clone(),
                path: Some(path.clone()),
                destination: Some(host.to_owned()),
                ..Evidence::default()
            },
        );
    } else if let Some(ms) = c.methods.get(&ds) {
        let fresh = if !ms.iter().any(|m| method_matches(*m, method)) {
            cx.fresh(Rule::UndeclaredMethod, &[name, "\0", method])
        } else {
            None
        };
        if let Some(f) = fresh {
            let allowed: Vec<String> = ms
                .iter()
                .map(|m| format!("{m:?}").to_ascii_uppercase())
                .collect();
            cx.open(
                f,
                format!(
                    "{who} called {method} on {name}; its contract allows {}",
                    allowed.join(", ")
                ),
                contract,
                Evidence {
                    data_source: Some(name.to_owned()),
                    method: Some(method.to_owned()),
                    path: Some(path.clone()),
                    destination: Some(host.to_owned()),
                    allowed,
                    ..Evidence::default()
                },
            );
        }
    }
}
