//! Bad kubeconfigs: arbitrary bytes, arbitrary YAML, and mutations of valid stored and user
//! kubeconfigs, through `parse_stored`, `read_remote` (from a file) and `sanitize`.
//!
//! Whatever comes in, nothing panics and every error is one non-empty line, both its own
//! message and the `error: ...; <hint>` line the plugin prints. What is accepted is
//! consistent: a parsed stored kubeconfig passes `validate_stored`, and what `sanitize` makes
//! is a valid stored kubeconfig that survives a YAML round trip.
//!
//! Case counts: `PROPTEST_CASES` (proptest's own variable) when set, else 256 ([`mesh_core::fixtures::proptest_config`]),
//! which keeps this file to a few seconds in a debug build.

use kube::config::Kubeconfig;
use kubectl_mesh::kubeconfig::{
    self, build_stored_kubeconfig, parse_stored, read_remote, sanitize, to_yaml, validate_stored,
};
use mesh_testenv::json_doc::{Splices, Syntax, TreeEdit, damage_byte, tree_edit};
use proptest::{
    prelude::*,
    sample::{Index, select},
    test_runner::TestCaseError,
};
use serde_json::Value;

/// The token of the valid stored kubeconfig.
const TOKEN: &str = "s3cr3t-t0ken-9f8e7d";

const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// A user's kubeconfig as `kubectl mesh attach --remote-kubeconfig` reads it: two contexts, a CA
/// file next to it, file-based client credentials on one user and an exec plugin on the other
/// (both allowed there, never in a stored kubeconfig). The plugin's unit tests read it too.
const USER_KUBECONFIG: &str = include_str!("data/user-kubeconfig.yaml");

fn stored_yaml() -> String {
    let kc = build_stored_kubeconfig("east", "https://127.0.0.1:6443", Some(CA), TOKEN);
    to_yaml(&kc).expect("yaml")
}

/// One error, as its own message and as the line the plugin prints (`<what>; <hint>`).
fn check_error(error: kubeconfig::Error) -> Result<(), TestCaseError> {
    let message = error.to_string();
    prop_assert!(!message.trim().is_empty(), "empty error: {error:?}");
    prop_assert!(!message.contains('\n'), "multi-line error: {message:?}");
    prop_assert!(!error.hint().trim().is_empty(), "no hint: {message:?}");
    let line = kubectl_mesh::Error::from(error).line();
    prop_assert!(!line.contains('\n'), "multi-line error line: {line:?}");
    prop_assert!(
        !line.contains('\r'),
        "carriage return in error line: {line:?}"
    );
    // The parser's excerpts of the document once put the stored token in the error line.
    prop_assert!(!line.contains(TOKEN), "the token is in the error: {line:?}");
    Ok(())
}

/// A stored kubeconfig that was accepted must be valid and survive a YAML round trip.
fn check_stored(kc: &Kubeconfig) -> Result<(), TestCaseError> {
    if let Err(error) = validate_stored(kc) {
        return Err(TestCaseError::fail(format!(
            "accepted but invalid: {error}"
        )));
    }
    let yaml = to_yaml(kc).map_err(|e| TestCaseError::fail(format!("to_yaml: {e}")))?;
    let back = parse_stored(&yaml)
        .map_err(|e| TestCaseError::fail(format!("round trip refused: {e}\n{yaml}")))?;
    prop_assert_eq!(&back.current_context, &kc.current_context);
    prop_assert_eq!(
        back.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone()),
        kc.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone())
    );
    Ok(())
}

fn check_parse_stored(text: &str) -> Result<(), TestCaseError> {
    match parse_stored(text) {
        Ok(kc) => check_stored(&kc),
        Err(error) => check_error(error),
    }
}

/// Writes `text` as a kubeconfig next to a CA file and reads it as a remote's, then turns
/// what was read into a stored kubeconfig.
fn check_read_remote(
    text: &[u8],
    context: Option<&str>,
    name: &str,
    token: &str,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.crt"), CA).expect("write ca");
    let path = dir.path().join("config");
    std::fs::write(&path, text).expect("write kubeconfig");
    // `--kubeconfig` reads files the same way.
    if let Err(error) = kubeconfig::load(Some(&path)) {
        check_error(error)?;
    }
    let kc = match read_remote(&path, context) {
        Ok(kc) => kc,
        Err(error) => return check_error(error),
    };
    // Only the chosen context, its cluster and user; the CA file inlined.
    prop_assert_eq!(kc.contexts.len(), 1);
    prop_assert_eq!(kc.clusters.len(), 1);
    prop_assert!(kc.auth_infos.len() <= 1);
    prop_assert_eq!(
        kc.current_context.as_deref(),
        Some(kc.contexts[0].name.as_str())
    );
    for cluster in kc.clusters.iter().filter_map(|c| c.cluster.as_ref()) {
        prop_assert!(cluster.certificate_authority.is_none(), "CA file kept");
    }
    match sanitize(&kc, name, token) {
        Ok(stored) => {
            prop_assert_eq!(stored.current_context.as_deref(), Some(name));
            check_stored(&stored)
        }
        Err(error) => check_error(error),
    }
}

/// Any JSON value (YAML's data model minus tags and aliases), a few levels deep.
fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
        select(INTERESTING_STRINGS).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z-]{0,12}",
        select(vec![
            "name",
            "cluster",
            "user",
            "context",
            "server",
            "token",
            "exec",
            "command",
            "certificate-authority",
            "certificate-authority-data",
            "current-context",
        ])
        .prop_map(str::to_owned),
    ]
}

const INTERESTING_STRINGS: &[&str] = &[
    "",
    "east",
    "East",
    "-east",
    "admin@east",
    "https://127.0.0.1:6443",
    "http://127.0.0.1:8080",
    "https://",
    "ca.crt",
    "missing.crt",
    ".",
    "not base64 !",
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
    "line one\nline two",
    "carriage\rreturn",
    "tab\there",
    "\u{0}nul",
    "naïve ☃ 名前",
];

/// Raw YAML text spliced into a document: what a JSON model cannot express.
const YAML_SNIPPETS: &[&str] = &[
    // Aliases (the exponential kind is in `yaml_bomb_is_refused`: a second per parse).
    "clusters: &c []\nusers: *c\n",
    "a: &a [x, x]\nb: [*a, *a]\n",
    "current-context: *undefined\n",
    // Merge keys, tags, a second document, odd scalars.
    "<<: {current-context: east}\n",
    "current-context: !!binary ZWFzdA==\n",
    "clusters: !custom {}\n",
    "---\nkind: Config\n",
    "--- |\n  text\n",
    "...\n",
    "current-context: ~\n",
    "current-context: 0x1f\n",
    "current-context: .nan\n",
    "? [complex, key]\n: value\n",
    "\t- tab indented\n",
    "%YAML 1.2\n---\n",
    "clusters: [{name: east, cluster: {server: https://x}}, {name: east}]\n",
    "\u{feff}kind: Config\n",
];

/// One change to a valid kubeconfig: on its tree, or on its text once serialized.
#[derive(Clone, Debug)]
enum Mutation {
    Tree(TreeEdit),
    /// Raw YAML inserted before the line picked.
    Snippet(Index, &'static str),
    /// Bytes: cut, overwrite or insert at the place picked.
    Bytes(Index, u8, u8),
}

/// Fields the functions under test read.
const FIELDS: &[&str] = &[
    "/apiVersion",
    "/kind",
    "/current-context",
    "/clusters",
    "/clusters/0",
    "/clusters/0/name",
    "/clusters/0/cluster",
    "/clusters/0/cluster/server",
    "/clusters/0/cluster/certificate-authority",
    "/clusters/0/cluster/certificate-authority-data",
    "/clusters/0/cluster/insecure-skip-tls-verify",
    "/clusters/0/cluster/tls-server-name",
    "/clusters/0/cluster/proxy-url",
    "/clusters/1",
    "/contexts",
    "/contexts/0/name",
    "/contexts/0/context",
    "/contexts/0/context/cluster",
    "/contexts/0/context/user",
    "/contexts/0/context/namespace",
    "/contexts/1",
    "/users",
    "/users/0/name",
    "/users/0/user",
    "/users/0/user/token",
    "/users/0/user/tokenFile",
    "/users/0/user/exec",
    "/users/0/user/exec/command",
    "/users/0/user/auth-provider",
    "/users/0/user/client-certificate",
    "/users/0/user/client-certificate-data",
    "/users/0/user/client-key-data",
    "/users/0/user/username",
    "/users/0/user/password",
    "/users/1",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        12 => tree_edit(arb_value(), FIELDS, 0usize..256 * 1024, 1usize..10_000)
            .prop_map(Mutation::Tree),
        4 => (select(FIELDS), select(INTERESTING_STRINGS))
            .prop_map(|(f, v)| Mutation::Tree(TreeEdit::Field(f, Value::from(v)))),
        2 => (any::<Index>(), select(YAML_SNIPPETS)).prop_map(|(i, s)| Mutation::Snippet(i, s)),
        2 => (any::<Index>(), any::<u8>(), any::<u8>()).prop_map(|(i, o, b)| Mutation::Bytes(i, o, b)),
    ]
}

/// `yaml` with `mutations` applied: structural ones on the parsed document, text ones on its
/// serialization.
fn mutate(yaml: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut doc: Value = serde_yaml::from_str(yaml).expect("valid YAML");
    let mut splices = Splices::new(Syntax::Yaml);
    let mut text_edits = Vec::new();
    for mutation in mutations {
        match mutation {
            Mutation::Tree(edit) => edit.apply(&mut doc, &mut splices),
            text => text_edits.push(text.clone()),
        }
    }
    let mut bytes = splices
        .into_text(serde_yaml::to_string(&doc).expect("serialize"))
        .into_bytes();
    for edit in text_edits {
        match edit {
            Mutation::Snippet(i, snippet) => {
                let starts: Vec<usize> = std::iter::once(0)
                    .chain(
                        bytes
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b'\n')
                            .map(|(at, _)| at + 1),
                    )
                    .collect();
                let at = *i.get(&starts);
                bytes.splice(at..at, snippet.bytes());
            }
            Mutation::Bytes(i, op, byte) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                damage_byte(&mut bytes, at, op, byte);
            }
            _ => {}
        }
    }
    bytes
}

#[test]
fn valid_kubeconfigs_pass() {
    let stored = parse_stored(&stored_yaml()).expect("stored");
    check_stored(&stored).expect("stored round trip");
    for context in [None, Some("admin@east"), Some("admin@west")] {
        check_read_remote(USER_KUBECONFIG.as_bytes(), context, "east", "tok").expect("remote");
    }
}

/// "Billion laughs": six levels of eight aliases. The parser's budget must refuse it.
const YAML_BOMB: &str = "a: &a [x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d]
f: [*e, *e, *e, *e, *e, *e, *e, *e]
";

#[test]
fn yaml_bomb_is_refused() {
    let text = format!("{YAML_BOMB}{}", stored_yaml());
    let error = parse_stored(&text).expect_err("refused");
    check_error(error).expect("one line");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config");
    std::fs::write(&path, format!("{YAML_BOMB}{USER_KUBECONFIG}")).expect("write");
    let error = read_remote(&path, None).expect_err("refused");
    check_error(error).expect("one line");
}

/// What these properties found, pinned.
#[test]
fn regressions() {
    // A context name with a line break, listed in the hint of "context not found".
    let text = USER_KUBECONFIG.replace("name: admin@west", "name: \"line one\\nline two\"");
    check_read_remote(text.as_bytes(), Some("nope"), "east", "t").expect("context hint");
    // A certificate-authority path with a line break.
    let text = USER_KUBECONFIG.replace(
        "certificate-authority: ca.crt",
        r#"certificate-authority: "a\nb""#,
    );
    check_read_remote(text.as_bytes(), None, "east", "t").expect("CA path");
    // A syntax error next to the token: the parser's excerpt quoted the token line.
    let text = stored_yaml().replace(
        &format!("token: {TOKEN}"),
        &format!("token: {TOKEN}\n    tokenFile: []"),
    );
    check_parse_stored(&text).expect("token in excerpt");
    // A UTF-16 file cut to an odd length: kube-client 5.0 panicked decoding its last byte.
    for bytes in [&b"\xFE\xFF\x00"[..], b"\xFF\xFEk\x00i\x00n"] {
        check_read_remote(bytes, None, "east", "t").expect("odd UTF-16");
    }
}

#[test]
fn odd_documents_do_not_panic() {
    for snippet in [
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "",
        "---\n---\n",
        "\u{feff}",
    ] {
        check_parse_stored(snippet).expect(snippet);
        check_read_remote(snippet.as_bytes(), None, "east", "t").expect(snippet);
    }
}

proptest! {
    #![proptest_config(mesh_core::fixtures::proptest_config())]

    #[test]
    fn arbitrary_bytes(
        bom in select(vec![&b""[..], b"\xEF\xBB\xBF", b"\xFF\xFE", b"\xFE\xFF"]),
        rest in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        // Byte-order marks choose how kube decodes a file: each way gets its share.
        let bytes = [bom, &rest[..]].concat();
        check_parse_stored(&String::from_utf8_lossy(&bytes))?;
        check_read_remote(&bytes, None, "east", "t")?;
    }

    #[test]
    fn arbitrary_yaml(value in arb_value(), snippet in prop::option::of(select(YAML_SNIPPETS))) {
        let mut text = serde_yaml::to_string(&value).expect("serialize");
        if let Some(snippet) = snippet {
            text.insert_str(0, snippet);
        }
        check_parse_stored(&text)?;
        check_read_remote(text.as_bytes(), None, "east", "t")?;
    }

    #[test]
    fn mutated_stored_kubeconfigs(mutations in prop::collection::vec(mutation(), 1..5)) {
        let bytes = mutate(&stored_yaml(), &mutations);
        check_parse_stored(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn mutated_user_kubeconfigs(
        mutations in prop::collection::vec(mutation(), 1..5),
        context in prop::option::of(prop_oneof![
            select(INTERESTING_STRINGS).prop_map(str::to_owned),
            any::<String>(),
        ]),
        name in prop_oneof![
            Just("east".to_owned()),
            select(INTERESTING_STRINGS).prop_map(str::to_owned),
            "[a-z0-9-]{1,70}",
        ],
        token in any::<String>(),
    ) {
        let bytes = mutate(USER_KUBECONFIG, &mutations);
        check_read_remote(&bytes, context.as_deref(), &name, &token)?;
    }
}
