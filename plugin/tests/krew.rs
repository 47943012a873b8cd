//! The krew manifest (`plugin/krew/mesh.yaml`) has the shape krew-index accepts and follows the
//! crate's version: a release that forgets to bump it fails here.

use std::collections::BTreeSet;

use serde_yaml::Value;

const MANIFEST: &str = include_str!("../krew/mesh.yaml");

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

#[test]
fn krew_manifest_is_complete_and_versioned() {
    let doc: Value = serde_yaml::from_str(MANIFEST).expect("mesh.yaml is YAML");
    assert_eq!(
        str_at(&doc, &["apiVersion"]),
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(str_at(&doc, &["kind"]), "Plugin");
    // `kubectl krew install mesh` installs `kubectl mesh`: the name is the binary's suffix.
    assert_eq!(str_at(&doc, &["metadata", "name"]), "mesh");
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(str_at(&doc, &["spec", "version"]), version);
    assert!(str_at(&doc, &["spec", "homepage"]).starts_with("https://"));
    // krew-index wants a short description that fits a line.
    assert!(str_at(&doc, &["spec", "shortDescription"]).len() <= 60);
    assert!(!str_at(&doc, &["spec", "description"]).is_empty());

    let platforms = doc["spec"]["platforms"].as_sequence().expect("platforms");
    let mut seen = BTreeSet::new();
    for p in platforms {
        let os = str_at(p, &["selector", "matchLabels", "os"]);
        let arch = str_at(p, &["selector", "matchLabels", "arch"]);
        assert!(
            seen.insert((os.to_owned(), arch.to_owned())),
            "{os}/{arch} twice"
        );
        let uri = str_at(p, &["uri"]);
        assert!(uri.starts_with("https://"), "{uri}");
        assert!(
            uri.ends_with(&format!(
                "/{version}/kubectl-mesh_{version}_{os}_{arch}.tar.gz"
            )),
            "{uri}"
        );
        let sha = str_at(p, &["sha256"]);
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{os}/{arch}: sha256 {sha:?}"
        );
        assert_eq!(str_at(p, &["bin"]), "kubectl-mesh");
        let files = p["files"].as_sequence().expect("files");
        assert!(
            files
                .iter()
                .any(|f| str_at(f, &["from"]) == "kubectl-mesh" && str_at(f, &["to"]) == "."),
            "{os}/{arch}: the binary is not installed"
        );
    }
    let expected: BTreeSet<(String, String)> = ["linux", "darwin"]
        .iter()
        .flat_map(|os| ["amd64", "arm64"].map(|arch| ((*os).to_owned(), arch.to_owned())))
        .collect();
    assert_eq!(seen, expected);
}
