//! The webhook's container image, built without a registry or a container builder.
//!
//! `webhook/Containerfile` builds the release image on machines with a builder; here base
//! images cannot be pulled, so [`build_webhook_image`] packs the same thing from scratch: the
//! `mesh-webhook` binary, exactly the shared libraries it loads (and the dynamic loader), the
//! distroless `nonroot` user (65532) and `/tmp`, as a one-layer docker-archive that
//! `ctr -n k8s.io images import` loads. The archive is deterministic: the same binary gives the
//! same image id.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// Where the binary lives in the image, as in `webhook/Containerfile`.
pub const WEBHOOK_PATH: &str = "/usr/local/bin/mesh-webhook";
/// The user the image runs as, as in `webhook/Containerfile` and the rendered Deployment.
pub const USER: &str = "65532:65532";
/// The reference `mesh-testenv image` tags the image with by default.
pub const LOCAL_REFERENCE: &str = concat!(
    "ghcr.io/kubectl-mesh/mesh-webhook:v",
    env!("CARGO_PKG_VERSION"),
    "-local"
);
/// The image's environment: distroless's PATH (nothing is looked up through it, but
/// `kubectl exec`-style tooling expects one).
const ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// distroless's account files: root and nonroot, neither with a usable shell.
const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
                      nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n";
/// Files before DNS, as distroless has it (glibc's default is the other way round).
const NSSWITCH: &str = "hosts: files dns\n";
/// Every entry's mtime, so the same inputs give the same bytes.
const MTIME: u64 = 0;

/// Builds the image of `binary` tagged `reference` into the docker-archive `out` and returns
/// `out`.
pub fn build_webhook_image(binary: &Path, reference: &str, out: &Path) -> anyhow::Result<PathBuf> {
    let archive = pack(binary, reference)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, &archive.bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(out.to_owned())
}

/// An image archive in memory, with the digests the tests check.
pub struct Archive {
    /// The docker-archive tarball.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the config: the image id `ctr images ls` and the kubelet show.
    pub id: String,
}

/// Packs `binary` and its libraries into a docker-archive tagged `reference`.
pub fn pack(binary: &Path, reference: &str) -> anyhow::Result<Archive> {
    let mut files = BTreeMap::new();
    let mut add = |path: &str, file: File| {
        let path = path.trim_start_matches('/').to_owned();
        // Every parent directory first (BTreeMap order puts "a" before "a/b").
        let mut parent = Path::new(&path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            files
                .entry(dir.to_string_lossy().into_owned())
                .or_insert(File::dir(0o755));
            parent = dir.parent();
        }
        files.insert(path, file);
    };
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    add(WEBHOOK_PATH, File::data(read(binary)?, 0o755));
    for library in shared_libraries(binary)? {
        let mode = if library.loader { 0o755 } else { 0o644 };
        // Stored as regular files at the path the loader asks for, whatever symlinks led
        // there on this machine: the image needs no links.
        add(
            &library.path,
            File::data(read(Path::new(&library.path))?, mode),
        );
    }
    add("/etc/passwd", File::data(PASSWD.into(), 0o644));
    add("/etc/group", File::data(GROUP.into(), 0o644));
    add("/etc/nsswitch.conf", File::data(NSSWITCH.into(), 0o644));
    add(
        "/home/nonroot",
        File {
            data: None,
            mode: 0o700,
            owner: 65532,
        },
    );
    // Sticky and world-writable as everywhere; read-only in the Deployment unless a volume
    // is mounted there.
    add("/tmp", File::dir(0o1777));

    let layer = tar_of(files.iter().map(|(path, file)| (path.as_str(), file)))?;
    let diff_id = format!("sha256:{}", hex_sha256(&layer));
    let config = serde_json::json!({
        "architecture": go_arch()?,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": USER,
            "Entrypoint": [WEBHOOK_PATH],
            "Env": [ENV],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.source": "https://github.com/kubectl-mesh/kubectl-mesh",
                "org.opencontainers.image.title": "mesh-webhook",
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "mesh-testenv image" }],
    });
    let config = serde_json::to_vec(&config)?;
    let config_hex = hex_sha256(&config);
    let layer_path = format!("{}/layer.tar", &diff_id["sha256:".len()..]);
    let config_path = format!("{config_hex}.json");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_path,
        "RepoTags": [reference],
        "Layers": [layer_path],
    }]))?;
    let outer = [
        (layer_path.as_str(), File::data(layer, 0o644)),
        (config_path.as_str(), File::data(config, 0o644)),
        ("manifest.json", File::data(manifest, 0o644)),
    ];
    let bytes = tar_of(outer.iter().map(|(path, file)| (*path, file)))?;
    Ok(Archive {
        bytes,
        id: format!("sha256:{config_hex}"),
    })
}

/// Builds `mesh-webhook` with the `dist` profile (release, stripped) and returns its path.
pub fn build_dist_webhook() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--profile",
            "dist",
            "-p",
            "mesh-webhook",
            "--bin",
            "mesh-webhook",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("cargo build --profile dist -p mesh-webhook failed; see the cargo output above");
    }
    // The artifact message names the executable, wherever the target directory is.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "mesh-webhook")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built mesh-webhook but named no executable")
}

/// A shared object the binary loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// Absolute path, as the loader resolves it (for the loader: the ELF interpreter path).
    pub path: String,
    /// Whether this is the dynamic loader itself.
    pub loader: bool,
}

/// The shared objects `binary` loads, as `ldd` resolves them on this machine (the vDSO,
/// which the kernel provides, aside). Empty for a static binary.
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<Library>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stdout.contains("statically linked") || stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("reading ldd's answer for {}", binary.display()))
}

fn parse_ldd(out: &str) -> anyhow::Result<Vec<Library>> {
    let mut libraries = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2
        // (0x...)", "linux-vdso.so.1 (0x...)", "libfoo.so => not found".
        let (name, resolved) = match line.split_once(" => ") {
            Some((name, rest)) => (name, Some(rest)),
            None => (line, None),
        };
        let path = match resolved {
            Some(rest) if rest.starts_with("not found") => {
                bail!("{name} not found: install the package that provides it")
            }
            Some(rest) => rest.split(" (").next().unwrap_or(rest).trim(),
            None => name.split(" (").next().unwrap_or(name).trim(),
        };
        if !path.starts_with('/') {
            continue; // the vDSO
        }
        libraries.push(Library {
            path: path.to_owned(),
            loader: resolved.is_none(),
        });
    }
    Ok(libraries)
}

/// An entry of a tarball: a regular file (`data`) or a directory.
struct File {
    data: Option<Vec<u8>>,
    mode: u32,
    owner: u64,
}

impl File {
    fn data(data: Vec<u8>, mode: u32) -> Self {
        Self {
            data: Some(data),
            mode,
            owner: 0,
        }
    }
    fn dir(mode: u32) -> Self {
        Self {
            data: None,
            mode,
            owner: 0,
        }
    }
}

/// A tarball of `entries` in the given order, with fixed mtimes and numeric owners only.
fn tar_of<'a>(entries: impl Iterator<Item = (&'a str, &'a File)>) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, file) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(file.mode);
        header.set_uid(file.owner);
        header.set_gid(file.owner);
        header.set_mtime(MTIME);
        match &file.data {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, data.as_slice())
                    .with_context(|| format!("packing {path}"))?;
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .with_context(|| format!("packing {path}"))?;
            }
        }
    }
    let mut bytes = builder.into_inner()?;
    bytes.flush()?;
    Ok(bytes)
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The image architecture of this machine, in Go's names (what image configs use).
fn go_arch() -> anyhow::Result<&'static str> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no image architecture known for {other}; build on amd64 or arm64"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_read() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f35)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f35)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f35)\n";
        let libs = parse_ldd(out).unwrap();
        assert_eq!(
            libs,
            vec![
                Library {
                    path: "/lib/x86_64-linux-gnu/libgcc_s.so.1".into(),
                    loader: false
                },
                Library {
                    path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
                    loader: false
                },
                Library {
                    path: "/lib64/ld-linux-x86-64.so.2".into(),
                    loader: true
                },
            ]
        );
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1 not found"), "{err}");
    }
}
