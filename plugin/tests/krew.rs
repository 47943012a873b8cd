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

/// Asserts that `text` (the `what` of the workflow) has every one of `parts`, naming each
/// it lacks.
#[track_caller]
fn assert_has_all(what: &str, text: &str, parts: &[&str]) {
    let missing: Vec<&str> = parts
        .iter()
        .copied()
        .filter(|p| !text.contains(p))
        .collect();
    assert!(missing.is_empty(), "{what} lacks {missing:?}:\n{text}");
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

const WORKFLOW: &str = include_str!("../../.github/workflows/release.yml");
const CONTAINERFILE: &str = include_str!("../../webhook/Containerfile");
const WORKSPACE_MANIFEST: &str = include_str!("../../Cargo.toml");

/// The release tag, as the workflow's first job requires it to be.
fn release_version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// Every `run:` script of a workflow job, joined.
fn runs(workflow: &Value, job: &str) -> String {
    workflow["jobs"][job]["steps"]
        .as_sequence()
        .unwrap_or_else(|| panic!("job {job} has no steps"))
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands `$NAME`, `${NAME}` and `${{ matrix.NAME }}` from `vars`, as the runner would.
fn render(script: &str, vars: &[(&str, &str)]) -> String {
    let mut out = script.to_owned();
    for (name, value) in vars {
        out = out
            .replace(&format!("${{{{ matrix.{name} }}}}"), value)
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

#[test]
fn release_workflow_publishes_what_the_plugin_deploys() {
    let workflow: Value = serde_yaml::from_str(WORKFLOW).expect("release.yml is YAML");
    let version = release_version();
    // serde_yaml reads the key `on` as a string (YAML 1.2), not as `true`.
    let tags = &workflow["on"]["push"]["tags"];
    assert_eq!(tags, &serde_yaml::from_str::<Value>("[\"v*\"]").unwrap());

    // Publishing only happens when the tag is the crate's version.
    let guard = runs(&workflow, "version");
    assert!(
        guard.contains("select(.name == \"kubectl-mesh\") | .version")
            && guard.contains("\"$version\" != \"$GITHUB_REF_NAME\""),
        "the version job must refuse a tag other than the crate's version:\n{guard}"
    );

    // The image: pushed under the tag the plugin deploys by default.
    let image = workflow["env"]["IMAGE"].as_str().expect("env.IMAGE");
    let build = render(
        &runs(&workflow, "image"),
        &[("IMAGE", image), ("VERSION", &version)],
    );
    let pushed = format!("--tag \"{}\"", kubectl_mesh::render::DEFAULT_IMAGE);
    assert!(
        build.contains(&pushed),
        "the workflow pushes no {pushed}:\n{build}"
    );
    assert_has_all(
        "image build",
        &build,
        &[
            "docker buildx build",
            "--file webhook/Containerfile",
            "--platform linux/amd64,linux/arm64",
            "--push",
        ],
    );
    assert!(
        CONTAINERFILE.contains("cargo build --locked --profile dist -p mesh-webhook"),
        "webhook/Containerfile must build mesh-webhook with the dist profile"
    );
    assert!(CONTAINERFILE.contains("USER 65532:65532"));

    // The krew archives: one per platform of the manifest, named as its uri says, built with
    // the dist profile from the plugin's package alone.
    let manifest: Value = serde_yaml::from_str(MANIFEST).unwrap();
    let plugin = &workflow["jobs"]["plugin"];
    let script = runs(&workflow, "plugin");
    assert!(
        script.contains("cargo build --locked --profile dist -p kubectl-mesh "),
        "the plugin is not built with the dist profile alone:\n{script}"
    );
    assert!(!script.contains("test-hooks") && !script.contains("--workspace"));
    let matrix = plugin["strategy"]["matrix"]["include"]
        .as_sequence()
        .expect("plugin matrix");
    let mut built = BTreeSet::new();
    for entry in matrix {
        let os = str_at(entry, &["os"]);
        let arch = str_at(entry, &["arch"]);
        let target = str_at(entry, &["target"]);
        let script = render(
            &script,
            &[
                ("os", os),
                ("arch", arch),
                ("target", target),
                ("VERSION", &version),
            ],
        );
        assert!(script.contains(&format!("target/{target}/dist/kubectl-mesh")));
        let name = script
            .lines()
            .find_map(|l| l.trim().strip_prefix("name=\""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("the pack step names the archive");
        built.insert(name.to_owned());
    }
    let wanted: BTreeSet<String> = manifest["spec"]["platforms"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            let uri = str_at(p, &["uri"]);
            assert!(uri.contains(&format!("/download/{version}/")), "{uri}");
            uri.rsplit('/').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        built, wanted,
        "archives built vs. archives the manifest names"
    );
    let release = runs(&workflow, "release");
    assert_has_all(
        "release job",
        &release,
        &[
            "plugin/krew/fill-manifest.sh \"$VERSION\" dist > dist/mesh.yaml",
            "gh release create \"$VERSION\"",
        ],
    );

    // The dist profile strips (the plugin has no TOML parser; the section is small).
    let dist = WORKSPACE_MANIFEST
        .split("\n[")
        .find(|s| s.starts_with("profile.dist]"))
        .expect("Cargo.toml has [profile.dist]");
    assert!(dist.contains("\ninherits = \"release\"\n"), "{dist}");
    assert!(
        dist.contains("\nstrip = true\n"),
        "[profile.dist] must strip:\n{dist}"
    );
}

/// fill-manifest.sh sets the release's version, URIs and each archive's sha256.
#[test]
fn fill_manifest_sets_version_and_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/krew/fill-manifest.sh");
    let manifest: Value = serde_yaml::from_str(MANIFEST).unwrap();
    for version in [release_version().as_str(), "v9.8.7"] {
        for p in manifest["spec"]["platforms"].as_sequence().unwrap() {
            let os = str_at(p, &["selector", "matchLabels", "os"]);
            let arch = str_at(p, &["selector", "matchLabels", "arch"]);
            let name = format!("kubectl-mesh_{version}_{os}_{arch}.tar.gz");
            std::fs::write(dir.path().join(name), format!("{os}/{arch}")).unwrap();
        }
        let out = std::process::Command::new("bash")
            .args([script, version])
            .arg(dir.path())
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let filled: Value = serde_yaml::from_slice(&out.stdout).expect("filled manifest is YAML");
        assert_eq!(str_at(&filled, &["spec", "version"]), version);
        let platforms = filled["spec"]["platforms"].as_sequence().unwrap();
        assert_eq!(
            platforms.len(),
            manifest["spec"]["platforms"].as_sequence().unwrap().len()
        );
        for p in platforms {
            let os = str_at(p, &["selector", "matchLabels", "os"]);
            let arch = str_at(p, &["selector", "matchLabels", "arch"]);
            let name = format!("kubectl-mesh_{version}_{os}_{arch}.tar.gz");
            assert_eq!(
                str_at(p, &["uri"]),
                format!(
                    "https://github.com/kubectl-mesh/kubectl-mesh/releases/download/{version}/{name}"
                )
            );
            let sha = std::process::Command::new("sha256sum")
                .arg(dir.path().join(&name))
                .output()
                .unwrap();
            let sha = String::from_utf8_lossy(&sha.stdout);
            assert_eq!(str_at(p, &["sha256"]), sha.split(' ').next().unwrap());
        }
        // Everything else is the manifest as committed.
        assert_eq!(
            filled["spec"]["description"],
            manifest["spec"]["description"]
        );
    }
    // A missing archive fails the release instead of publishing a placeholder.
    std::fs::remove_file(dir.path().join("kubectl-mesh_v9.8.7_linux_arm64.tar.gz")).unwrap();
    let out = std::process::Command::new("bash")
        .args([script, "v9.8.7"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing archive"));
}
