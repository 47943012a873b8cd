//! The webhook image `mesh-testenv image` builds: a consistent docker-archive, and a root
//! filesystem in which the binary runs with nothing from the host (chroot, then containerd).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mesh_testenv::image::{self, USER, WEBHOOK_PATH};
use serde_json::Value;
use sha2::{Digest, Sha256};

const REFERENCE: &str = "ghcr.io/kubectl-mesh/mesh-webhook:test";

/// The binary `cargo build --workspace --bins` built, stripped as the `dist` profile does (a
/// `dist` build takes minutes more; both link the same libraries): the debug binary is ten
/// times larger, and every test holds a few copies of the image in memory.
fn webhook() -> PathBuf {
    static STRIPPED: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = STRIPPED.get_or_init(|| {
        let built = mesh_testenv::workspace_binary("mesh-webhook").expect("mesh-webhook built");
        let dir = tempfile::tempdir().unwrap();
        let stripped = dir.path().join("mesh-webhook");
        let status = Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&built)
            .status()
            .expect("strip (Debian package binutils) runs");
        assert!(status.success(), "strip {} failed", built.display());
        (dir, stripped)
    });
    path.clone()
}

struct Entry {
    header: tar::Header,
    data: Vec<u8>,
}

/// Every entry of a tarball, by path, in archive order.
fn entries(tarball: &[u8]) -> Vec<(String, Entry)> {
    let mut archive = tar::Archive::new(tarball);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (
                path,
                Entry {
                    header: e.header().clone(),
                    data,
                },
            )
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Image {
    manifest: Value,
    config: Value,
    layer_tar: Vec<u8>,
    layer: Vec<(String, Entry)>,
}

/// Opens an archive, checking that manifest, config and layer reference each other by digest.
fn open(archive: &image::Archive) -> Image {
    let outer: BTreeMap<String, Entry> = entries(&archive.bytes).into_iter().collect();
    let manifest: Value = serde_json::from_slice(&outer["manifest.json"].data).unwrap();
    let manifest = manifest.as_array().unwrap();
    assert_eq!(manifest.len(), 1, "one image in the archive");
    let manifest = manifest[0].clone();
    let config_name = manifest["Config"].as_str().unwrap();
    let config_bytes = &outer[config_name].data;
    // The config's name is its digest, and that is the image id.
    assert_eq!(config_name, format!("{}.json", sha256(config_bytes)));
    assert_eq!(archive.id, format!("sha256:{}", sha256(config_bytes)));
    let config: Value = serde_json::from_slice(config_bytes).unwrap();
    let layers = manifest["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer");
    let layer = &outer[layers[0].as_str().unwrap()].data;
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([format!("sha256:{}", sha256(layer))]),
        "diff_ids name the layer"
    );
    assert_eq!(outer.len(), 3, "{:?}", outer.keys().collect::<Vec<_>>());
    Image {
        manifest,
        config,
        layer: entries(layer),
        layer_tar: layer.clone(),
    }
}

#[test]
fn archive_is_consistent_deterministic_and_complete() {
    let binary = webhook();
    let archive = image::pack(&binary, REFERENCE).unwrap();
    let again = image::pack(&binary, REFERENCE).unwrap();
    assert!(
        archive.bytes == again.bytes,
        "the same binary packs to other bytes"
    );

    let image = open(&archive);
    assert_eq!(image.manifest["RepoTags"], serde_json::json!([REFERENCE]));
    let config = &image.config;
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["User"], USER);
    assert_eq!(
        USER, "65532:65532",
        "the Deployment's runAsUser and runAsGroup"
    );
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!([WEBHOOK_PATH])
    );
    assert!(
        config["config"]["Env"][0]
            .as_str()
            .unwrap()
            .starts_with("PATH=")
    );

    let paths: Vec<&str> = image.layer.iter().map(|(p, _)| p.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "entries sorted");
    let layer: BTreeMap<&str, &Entry> = image
        .layer
        .iter()
        .map(|(p, e)| (p.trim_end_matches('/'), e))
        .collect();
    for (path, entry) in &layer {
        assert_eq!(entry.header.mtime().unwrap(), 0, "{path}: mtime");
        if let Some(parent) = Path::new(path).parent().filter(|p| *p != Path::new("")) {
            assert!(
                layer.contains_key(parent.to_str().unwrap()),
                "{path} without its directory"
            );
        }
    }
    let file = |path: &str| {
        layer
            .get(path.trim_start_matches('/'))
            .unwrap_or_else(|| panic!("{path} missing from the layer"))
    };
    let bin = file(WEBHOOK_PATH);
    assert_eq!(bin.data, std::fs::read(&binary).unwrap());
    assert_eq!(bin.header.mode().unwrap(), 0o755);
    let libraries = image::shared_libraries(&binary).unwrap();
    assert!(
        libraries.iter().any(|l| l.loader),
        "a dynamic binary has a loader: {libraries:?}"
    );
    for library in &libraries {
        assert_eq!(
            file(&library.path).data,
            std::fs::read(&library.path).unwrap(),
            "{}",
            library.path
        );
    }
    let passwd = String::from_utf8(file("/etc/passwd").data.clone()).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    let group = String::from_utf8(file("/etc/group").data.clone()).unwrap();
    assert!(group.contains("nonroot:x:65532:"), "{group}");
    assert_eq!(file("/tmp").header.mode().unwrap(), 0o1777);
    let home = file("/home/nonroot");
    assert_eq!(home.header.uid().unwrap(), 65532);
    // Nothing else: no shell, no package database.
    let libs: Vec<String> = libraries
        .iter()
        .map(|l| l.path.trim_start_matches('/').to_owned())
        .collect();
    for path in layer.keys() {
        let known = layer[path].header.entry_type().is_dir()
            || *path == WEBHOOK_PATH.trim_start_matches('/')
            || libs.iter().any(|l| l == path)
            || ["etc/passwd", "etc/group", "etc/nsswitch.conf"].contains(path);
        assert!(known, "unexpected {path} in the image");
    }
}

/// Unpacks the image's layer into a fresh directory: the container's root filesystem.
fn root_filesystem(archive: &image::Archive) -> tempfile::TempDir {
    let image = open(archive);
    let root = tempfile::tempdir().unwrap();
    let mut unpack = tar::Archive::new(image.layer_tar.as_slice());
    unpack.set_preserve_permissions(true);
    unpack.unpack(root.path()).unwrap();
    root
}

fn is_root() -> bool {
    // /proc/self belongs to the effective user.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// The binary runs from the layer alone, as the image's user, on a read-only root: a library
/// missing from the image fails here. Needs root (chroot and mounts), as the node tests do.
#[test]
fn binary_runs_from_the_layer_alone() {
    assert!(
        is_root(),
        "this test chroots into the image's root filesystem: run the tests as root"
    );
    let archive = image::pack(&webhook(), REFERENCE).unwrap();
    let root = root_filesystem(&archive);
    let dir = root.path().to_str().unwrap();
    // A private mount namespace: the root is bound read-only onto itself, then entered.
    let script = format!(
        "mount --bind {dir} {dir} && mount -o remount,bind,ro {dir} && \
         exec chroot --userspec={USER} {dir} {WEBHOOK_PATH} --version"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .output()
        .expect("unshare (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mesh-webhook --version in the image's root failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("mesh-webhook {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A private containerd under a temporary directory, killed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The node's configuration: the image loads and runs as it would on the node.
        let config = mesh_testenv::node::containerd_config(d, &d.join("containerd.sock"));
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package containerd) starts");
        let containerd = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while containerd.ctr(&["version"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 20s: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr -n k8s.io ARGS` against this containerd; its stdout, or stderr as the error.
    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshots stay mounted when a container outlived its task; unmount before the
        // temporary directory goes.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}

/// The archive loads into containerd as the node's does it, and runs as a container on a
/// read-only root filesystem with the image's own user.
#[test]
fn containerd_imports_and_runs_the_image() {
    assert!(
        is_root(),
        "this test runs containerd: run the tests as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("mesh-webhook.tar");
    image::build_webhook_image(&webhook(), REFERENCE, &archive).unwrap();
    let containerd = Containerd::start();
    containerd
        .ctr(&["images", "import", archive.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
    let images = containerd.ctr(&["images", "ls", "-q"]).unwrap();
    assert!(images.lines().any(|l| l == REFERENCE), "{images}");
    // Kept after it exits (no --rm) so that its spec can be read.
    let out = containerd
        .ctr(&[
            "run",
            "--read-only",
            REFERENCE,
            "mesh-webhook-version",
            WEBHOOK_PATH,
            "--version",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", containerd.log()));
    assert_eq!(
        out.trim(),
        format!("mesh-webhook {}", env!("CARGO_PKG_VERSION"))
    );
    let info: Value = serde_json::from_str(
        &containerd
            .ctr(&["containers", "info", "mesh-webhook-version"])
            .unwrap(),
    )
    .unwrap();
    let spec = &info["Spec"];
    assert_eq!(spec["process"]["user"]["uid"], 65532, "the image's user");
    assert_eq!(spec["process"]["user"]["gid"], 65532);
    assert_eq!(spec["root"]["readonly"], true);
    containerd
        .ctr(&["containers", "rm", "mesh-webhook-version"])
        .unwrap();
}

/// The webhook as the image runs it (chrooted into the layer, 65532, read-only root, its
/// kubeconfig and serving certificate mounted as the Deployment mounts them) against a real
/// primary: it becomes ready, which means it loaded its certificate and listed the primary.
#[tokio::test]
async fn webhook_from_the_image_answers_readyz() {
    assert!(
        is_root(),
        "this test chroots into the image's root filesystem: run the tests as root"
    );
    let env = mesh_testenv::TestEnv::start(mesh_testenv::Options {
        remotes: 0,
        dir: None,
        node: false,
        ..mesh_testenv::Options::default()
    })
    .await
    .expect("control plane starts");
    let kubeconfig = &env.primary().kubeconfig;
    let kubectl = mesh_testenv::Binaries::ensure().unwrap().kubectl();
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    let applied = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f"])
        .arg(manifests.join("crd.yaml"))
        .arg("-f")
        .arg(manifests.join("namespace.yaml"))
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let archive = image::pack(&webhook(), REFERENCE).unwrap();
    let root = root_filesystem(&archive);
    // What the Deployment mounts: the serving certificate (a Secret, readable by the pod's
    // user) and, in place of the in-cluster account, a kubeconfig.
    let conf = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::create_dir(conf.path().join("tls")).unwrap();
    std::fs::write(conf.path().join("tls/tls.crt"), key.cert.pem()).unwrap();
    std::fs::write(
        conf.path().join("tls/tls.key"),
        key.signing_key.serialize_pem(),
    )
    .unwrap();
    std::fs::copy(kubeconfig, conf.path().join("kubeconfig")).unwrap();
    let status = Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(conf.path())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::create_dir_all(root.path().join("etc/mesh-webhook")).unwrap();

    let (listen, metrics) = (
        mesh_testenv::ports::free_port().unwrap(),
        mesh_testenv::ports::free_port().unwrap(),
    );
    let dir = root.path().to_str().unwrap();
    let script = format!(
        "mount --bind {dir} {dir} && mount --bind {conf} {dir}/etc/mesh-webhook && \
         mount -o remount,bind,ro {dir} && \
         exec chroot --userspec={USER} {dir} {WEBHOOK_PATH} \
           --listen 127.0.0.1:{listen} --metrics-listen 127.0.0.1:{metrics} \
           --cert-dir /etc/mesh-webhook/tls --kubeconfig /etc/mesh-webhook/kubeconfig",
        conf = conf.path().display()
    );
    let log = conf.path().join("mesh-webhook.log");
    // Every step execs: the child's pid ends up being mesh-webhook's.
    let mut webhook = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let webhook = Kill(&mut webhook);

    let mut config = kube::Config::new(format!("https://127.0.0.1:{metrics}").parse().unwrap());
    config.root_cert = Some(vec![key.cert.der().to_vec()]);
    let client = kube::Client::try_from(config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
        match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => break,
            _ => {}
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            webhook.0.try_wait().unwrap().is_none(),
            "mesh-webhook exited:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "mesh-webhook not ready within 30s:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It runs as the image's user.
    let status = std::fs::read_to_string(format!("/proc/{}/status", webhook.0.id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "{uid}");
}
