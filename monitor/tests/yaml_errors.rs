//! YAML syntax errors in the configuration and in rules files: takes a file with an unclosed bracket or quote, gives whether the error names where it was opened as well as where the parser noticed.

use nhiwatch::{config::Config, contracts::load_str};

#[test]
fn config_error_names_the_unclosed_bracket() {
    let yaml = "sensors:\n  files:\n    watch: [/etc/a, /etc/b\n  tls: {}\n";
    let msg = Config::parse(yaml, "c.yaml").unwrap_err().to_string();
    assert!(msg.contains("line 4 column 6"), "where noticed: {msg}");
    assert!(
        msg.contains("the `[` opened at line 3 column 12 is not closed"),
        "{msg}"
    );
}

#[test]
fn config_error_names_the_unclosed_quote() {
    let yaml = "state_dir: \"/var/lib/nhiwatch\nsensors: {}\n";
    let msg = Config::parse(yaml, "c.yaml").unwrap_err().to_string();
    assert!(
        msg.contains("the quote opened at line 1 column 12 is not closed"),
        "{msg}"
    );
}

#[test]
fn config_error_without_an_opening_elsewhere_is_unchanged() {
    let msg = Config::parse("sensors:\n  ring_bufer_bytes: 4096\n", "c.yaml")
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("opened at"), "{msg}");
}

#[test]
fn rules_error_names_the_unclosed_bracket_in_file_lines() {
    // Second document of the file: the opening's line counts from the file, like the error's.
    let yaml = "apiVersion: nhiwatch.io/v1alpha1\nkind: DataSource\nmetadata: {name: a}\n---\n\
apiVersion: nhiwatch.io/v1alpha1\nkind: AccessContract\nmetadata: {name: x}\nspec:\n  identities: {a: b\n  secrets: []\n";
    let errors = load_str("r.yaml", yaml).unwrap_err();
    let msg = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let e = errors
        .iter()
        .find(|e| e.what.contains("opened at"))
        .unwrap_or_else(|| panic!("no error names the opening: {msg}"));
    assert_eq!((e.line, e.column), (10, 10), "{msg}");
    assert!(
        e.what
            .contains("the `{` opened at line 9 column 15 is not closed"),
        "{msg}"
    );
}
