//! Proof that the test environment is real: namespaces live and die on every cluster, the
//! apiserver calls a webhook over TLS, and service-account tokens authenticate on their own
//! cluster only. And the README's demo: `mesh-testenv up --mesh --istio` run as a human runs
//! it, the commands it suggests in a shell that sourced `env.sh`, and Ctrl-C or `down` stopping
//! every process it started.

use std::collections::BTreeMap;

use anyhow::{Context, ensure};

use axum::Json;
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Client};
use mesh_e2e::tokens::mint_token;
use mesh_e2e::{
    DEFAULT_TIMEOUT, HttpsServer, TestCertificate, assert_success, describe, eventually, has_line,
    kubectl, relabel_until, run, shared_env, text, unique_name,
};
use serde_json::json;

async fn namespace_gone(api: &Api<Namespace>, name: &str) -> anyhow::Result<()> {
    eventually(
        &format!("namespace {name} deleted"),
        DEFAULT_TIMEOUT,
        || async { Ok(api.get_opt(name).await?.is_none().then_some(())) },
    )
    .await
}

#[tokio::test]
async fn namespaces_live_and_die_on_every_cluster_with_kube_rs() -> anyhow::Result<()> {
    let env = shared_env(2).await;
    for cluster in env.clusters() {
        let api: Api<Namespace> = Api::all(cluster.client().await?);
        let name = unique_name("kube-rs");
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        api.create(&PostParams::default(), &ns).await?;
        let patch = json!({"metadata": {"labels": {"istio-injection": "enabled"}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let stored = api.get(&name).await?;
        assert_eq!(
            stored
                .metadata
                .labels
                .unwrap_or_default()
                .get("istio-injection"),
            Some(&"enabled".to_string()),
            "label stored on {}",
            cluster.name
        );
        api.delete(&name, &DeleteParams::default()).await?;
        namespace_gone(&api, &name).await?;
    }
    Ok(())
}

#[tokio::test]
async fn namespaces_live_and_die_on_every_cluster_with_kubectl() -> anyhow::Result<()> {
    let env = shared_env(2).await;
    for cluster in env.clusters() {
        let name = unique_name("kubectl");
        kubectl(env, cluster, &["create", "namespace", &name]).await?;
        kubectl(
            env,
            cluster,
            &["label", "namespace", &name, "istio.io/rev=canary"],
        )
        .await?;
        let rev = kubectl(
            env,
            cluster,
            &[
                "get",
                "namespace",
                &name,
                "-o",
                "jsonpath={.metadata.labels.istio\\.io/rev}",
            ],
        )
        .await?;
        assert_eq!(rev, "canary", "on {}", cluster.name);
        // --wait makes kubectl return only once the namespace controller finished.
        kubectl(
            env,
            cluster,
            &["delete", "namespace", &name, "--wait=true", "--timeout=60s"],
        )
        .await?;
        let left = kubectl(
            env,
            cluster,
            &[
                "get",
                "namespace",
                &name,
                "--ignore-not-found",
                "-o",
                "name",
            ],
        )
        .await?;
        assert_eq!(left, "", "{name} still on {}", cluster.name);
    }
    Ok(())
}

const CALLED_ANNOTATION: &str = "e2e.kubectl-mesh.io/webhook-called";

/// Answers every review with a patch that records the call on the object.
async fn mutate(
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => return Json(AdmissionResponse::invalid(error.to_string()).into_review()),
    };
    let has_annotations = request
        .object
        .as_ref()
        .is_some_and(|o| o.metadata.annotations.is_some());
    let mut ops = Vec::new();
    if !has_annotations {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    ops.push(json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", CALLED_ANNOTATION.replace('/', "~1")),
        "value": request.uid,
    }));
    let response = AdmissionResponse::from(&request);
    let response = match serde_json::from_value(serde_json::Value::Array(ops)) {
        Ok(patch) => response
            .with_patch(patch)
            .unwrap_or_else(|e| AdmissionResponse::invalid(e.to_string())),
        Err(error) => AdmissionResponse::invalid(error.to_string()),
    };
    Json(response.into_review())
}

#[tokio::test]
async fn apiserver_calls_a_webhook_over_tls_and_applies_its_patch() -> anyhow::Result<()> {
    let env = shared_env(2).await;
    let primary = env.primary();
    let client = primary.client().await?;
    let cert = TestCertificate::for_loopback()?;
    let server =
        HttpsServer::start(axum::Router::new().route("/mutate", post(mutate)), &cert).await?;

    // Scoped by a label so other tests sharing the primary never meet this webhook.
    let selector_label = unique_name("webhook-test");
    let name = unique_name("e2e-webhook");
    use base64::Engine;
    let webhook: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "e2e.kubectl-mesh.io",
            "clientConfig": {
                "url": format!("https://{}/mutate", server.addr),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&cert.ca_pem),
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["namespaces"]}],
            "objectSelector": {"matchLabels": {"e2e-webhook": selector_label}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }],
    }))?;
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    webhooks.create(&PostParams::default(), &webhook).await?;

    let namespace = unique_name("webhook-target");
    kubectl(env, primary, &["create", "namespace", &namespace]).await?;

    // The apiserver loads webhook configurations asynchronously, so the first edits may pass
    // before it knows the webhook: label again until the patch shows on the stored object.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let uid = relabel_until(
        env,
        primary,
        &namespace,
        "webhook patch on the stored namespace",
        |attempt| {
            vec![
                format!("e2e-webhook={selector_label}"),
                format!("e2e-attempt={attempt}"),
            ]
        },
        |out| {
            let (namespaces, namespace) = (&namespaces, &namespace);
            async move {
                ensure!(out.status.success(), "{}", describe(&out));
                let stored = namespaces.get(namespace).await?;
                let annotations: BTreeMap<String, String> =
                    stored.metadata.annotations.unwrap_or_default();
                Ok(annotations.get(CALLED_ANNOTATION).cloned())
            }
        },
    )
    .await?;
    assert!(!uid.is_empty(), "the patch carries the request uid");

    webhooks.delete(&name, &DeleteParams::default()).await?;
    Api::<Namespace>::all(client)
        .delete(&namespace, &DeleteParams::default())
        .await?;
    Ok(())
}

/// A client that authenticates with `token` only, trusting `ca_pem`.
async fn token_client(server: &str, ca_pem: &[u8], token: &str) -> anyhow::Result<Client> {
    use base64::Engine;
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem)}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn who_am_i(client: Client) -> Result<String, kube::Error> {
    let review = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

#[tokio::test]
async fn token_request_authenticates_on_its_own_cluster_only() -> anyhow::Result<()> {
    let env = shared_env(2).await;
    let remote = &env.remotes()[0];
    let client = remote.client().await?;
    let namespace = unique_name("token");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "prober"}}))?,
        )
        .await?;
    let token = mint_token(&accounts, "prober", 600).await?;

    // Each cluster's CA comes from its admin kubeconfig; only the token differs in trust.
    let ca_of = |cluster: &mesh_testenv::Cluster| -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(
            cluster
                .kubeconfig
                .parent()
                .context("dir")?
                .join(&cluster.name)
                .join("ca.crt"),
        )?)
    };
    let own = token_client(&remote.server, &ca_of(remote)?, &token).await?;
    assert_eq!(
        who_am_i(own).await?,
        format!("system:serviceaccount:{namespace}:prober")
    );
    for other in env.clusters().iter().filter(|c| c.name != remote.name) {
        let foreign = token_client(&other.server, &ca_of(other)?, &token).await?;
        match who_am_i(foreign).await {
            Err(kube::Error::Api(status)) if status.code == 401 => {}
            other_result => panic!(
                "token of {} on {}: expected 401, got {other_result:?}",
                remote.name, other.name
            ),
        }
    }
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await?;
    Ok(())
}

/// A process of the machine, told apart from a later one that reuses its pid by its start time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Process {
    pid: u32,
    start_time: u64,
    command: String,
}

impl Process {
    /// The process `pid` now, with its parent's pid; `None` when it is gone.
    fn read(pid: u32) -> Option<(Self, u32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, the rest not.
        let (head, rest) = stat.rsplit_once(')')?;
        let command = head.split_once('(')?.1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid = fields.get(1)?.parse().ok()?;
        let start_time = fields.get(19)?.parse().ok()?;
        Some((
            Self {
                pid,
                start_time,
                command,
            },
            ppid,
        ))
    }

    /// Whether this very process still exists (a zombie does not count: it runs nothing).
    fn is_alive(&self) -> bool {
        let state = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim().to_owned()));
        Process::read(self.pid).is_some_and(|(now, _)| now.start_time == self.start_time)
            && !state.is_some_and(|s| s.starts_with('Z'))
    }

    /// Every process descending from `root` now.
    fn descendants(root: u32) -> anyhow::Result<Vec<Self>> {
        let mut by_parent: BTreeMap<u32, Vec<Self>> = BTreeMap::new();
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some((process, ppid)) = Self::read(pid) {
                by_parent.entry(ppid).or_default().push(process);
            }
        }
        let mut found = Vec::new();
        let mut parents = vec![root];
        while let Some(parent) = parents.pop() {
            for child in by_parent.remove(&parent).unwrap_or_default() {
                parents.push(child.pid);
                found.push(child);
            }
        }
        Ok(found)
    }
}

/// `mesh-testenv up` run as a human runs it, in a directory of its own. Dropping it stops
/// the tool (SIGTERM, then SIGKILL), so a failing test leaves no control planes behind.
struct Up {
    child: std::sync::Mutex<std::process::Child>,
    dir: std::path::PathBuf,
    _temp: tempfile::TempDir,
}

impl Up {
    fn start(args: &[&str]) -> anyhow::Result<Self> {
        let temp = tempfile::Builder::new().prefix("mesh-demo-").tempdir()?;
        let dir = temp.path().canonicalize()?;
        let mut cmd =
            std::process::Command::new(mesh_e2e::mesh_testenv::workspace_binary("mesh-testenv")?);
        cmd.arg("up")
            .arg("--dir")
            .arg(&dir)
            .args(args)
            // `up --mesh` builds kubectl-mesh and mesh-webhook first; the test runs those
            // already built (cargo build --workspace --bins), and a cargo started from inside
            // `cargo test` would only wait for the locks of the builds around it.
            .env("CARGO", "true")
            .env_remove("MESH_TESTENV_DIR")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(dir.join("up.stdout"))?)
            .stderr(std::fs::File::create(dir.join("up.stderr"))?);
        let child = cmd.spawn()?;
        Ok(Self {
            child: std::sync::Mutex::new(child),
            dir,
            _temp: temp,
        })
    }

    fn pid(&self) -> u32 {
        self.lock().id()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::process::Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn output(&self, stream: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("up.{stream}"))).unwrap_or_default()
    }

    /// Waits for `DIR/ready`, failing at once with the tool's output if it exits first.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        // An exit ends the wait as a value: an error would only be kept as the last one seen
        // while `eventually` polls on to its deadline.
        let exited = eventually(
            "mesh-testenv up writes DIR/ready or exits",
            std::time::Duration::from_secs(180),
            || async {
                if let Some(status) = self.lock().try_wait()? {
                    return Ok(Some(Some(status)));
                }
                Ok(self.dir.join("ready").exists().then_some(None))
            },
        )
        .await?;
        match exited {
            Some(status) => anyhow::bail!(
                "mesh-testenv up exited ({status}) before it was ready:\n{}",
                self.output("stderr")
            ),
            None => Ok(()),
        }
    }

    /// Waits until the tool has exited, and returns how.
    async fn wait_exit(&self) -> anyhow::Result<std::process::ExitStatus> {
        eventually(
            "mesh-testenv up exits",
            std::time::Duration::from_secs(60),
            || async { Ok(self.lock().try_wait()?) },
        )
        .await
    }

    /// `bash -c 'source DIR/env.sh && <script>'`, as the README's second shell does it.
    async fn in_demo_shell(&self, script: &str) -> anyhow::Result<std::process::Output> {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c")
            .arg(format!("source {}/env.sh && {script}", self.dir.display()))
            .env_remove("KUBECONFIG")
            .env("NO_COLOR", "1")
            .current_dir(&self.dir);
        mesh_e2e::fixtures::output(cmd).await
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let mut child = self.lock();
        if matches!(child.try_wait(), Ok(None)) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Processes of the tool's environment by command name (as /proc shows it, cut at 15 bytes).
fn count_by_command(processes: &[Process]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for p in processes {
        *counts.entry(p.command.as_str()).or_default() += 1;
    }
    counts
}

async fn all_gone(processes: &[Process]) -> anyhow::Result<()> {
    eventually(
        "every process mesh-testenv started is gone",
        DEFAULT_TIMEOUT,
        || async {
            let alive: Vec<&Process> = processes.iter().filter(|p| p.is_alive()).collect();
            if alive.is_empty() {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!("still running: {alive:?}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_readme_demo_runs_and_ctrl_c_stops_every_process() -> anyhow::Result<()> {
    let up = Up::start(&["--remotes", "2", "--mesh", "--istio"])?;
    up.wait_ready().await?;
    let dir = up.dir.display().to_string();
    let processes = Process::descendants(up.pid())?;
    let counts = count_by_command(&processes);
    for (command, count) in [
        ("etcd", 1),
        ("kube-apiserver", 3),
        ("kube-controller", 3),
        ("mesh-webhook", 1),
        ("pilot-discovery", 1),
    ] {
        assert_eq!(counts.get(command), Some(&count), "{command}: {counts:?}");
    }
    let stdout = up.output("stdout");
    assert!(
        stdout.contains("The mesh is up: mesh-webhook at https://127.0.0.1:")
            && stdout.contains(", 2 remote(s) attached."),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  source {dir}/env.sh\n")),
        "{stdout}"
    );

    let list = up.in_demo_shell("kubectl mesh list").await?;
    assert_success(&list);
    let table = text(&list.stdout);
    for remote in ["remote-1", "remote-2"] {
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(remote))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        assert_eq!(row.get(2), Some(&"True"), "{remote} reachable in\n{table}");
    }

    // On the primary and remote-1 only: the label's warnings then tell of remote-2.
    for create in [
        "kubectl create namespace shop".to_owned(),
        format!("kubectl --kubeconfig {dir}/remote-1.kubeconfig create namespace shop"),
    ] {
        let created = up.in_demo_shell(&create).await?;
        assert_eq!(
            text(&created.stdout),
            "namespace/shop created\n",
            "{}",
            describe(&created)
        );
    }
    let labelled = up
        .in_demo_shell("kubectl label namespace shop istio-injection=enabled")
        .await?;
    assert_success(&labelled);
    assert_eq!(text(&labelled.stdout), "namespace/shop labeled\n");
    let warnings = text(&labelled.stderr);
    for line in [
        "Warning: kubectl-mesh: istio-injection=enabled applied on remote-1",
        "Warning: kubectl-mesh: remote-2: namespace shop does not exist there (not created)",
    ] {
        assert!(has_line(&warnings, line), "{line:?} in\n{warnings}");
    }
    // istiod's injector on remote-1 acts on the label: no warning says otherwise.
    assert!(!warnings.contains("no injector"), "{warnings}");
    let pod = up
        .in_demo_shell(&format!(
            "kubectl --kubeconfig {dir}/remote-1.kubeconfig -n shop run web --image=nginx \
             --dry-run=server -o jsonpath='{{.spec.containers[*].name}}'"
        ))
        .await?;
    assert_eq!(text(&pod.stdout), "web istio-proxy", "{}", describe(&pod));
    let shown = up
        .in_demo_shell(&format!(
            "kubectl --kubeconfig {dir}/remote-1.kubeconfig get namespace shop --show-labels"
        ))
        .await?;
    assert!(
        text(&shown.stdout).contains("istio-injection=enabled"),
        "{}",
        describe(&shown)
    );
    let status = up.in_demo_shell("kubectl mesh status").await?;
    assert_success(&status);
    let rows: Vec<Vec<String>> = text(&status.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["NAMESPACE", "PRIMARY", "REMOTE-1", "REMOTE-2"],
            [
                "shop",
                "istio-injection=enabled",
                "istio-injection=enabled",
                "(missing)"
            ]
        ],
        "{}",
        describe(&status)
    );
    let check = up.in_demo_shell("kubectl mesh check").await?;
    assert_success(&check);
    let report = text(&check.stdout);
    for line in [
        "✓ namespaces asking for sidecars have an injector (1 namespace served)",
        "✓ istiod's remote secret reads the cluster (istio-system/istio-remote-secret-remote-1)",
    ] {
        assert!(has_line(&report, line), "{line:?} in\n{report}");
    }
    assert!(
        report.ends_with("Status check results are ✓ (0 errors, 0 warnings)\n"),
        "{}",
        describe(&check)
    );

    // What must stop is running now.
    let started: Vec<&Process> = processes
        .iter()
        .filter(|p| p.command != "sh" && p.command != "sleep")
        .collect();
    assert!(started.iter().all(|p| p.is_alive()), "{started:?}");

    // Ctrl-C, as the README says.
    run({
        let mut kill = std::process::Command::new("kill");
        kill.args(["-INT", &up.pid().to_string()]);
        kill
    })
    .await?;
    let exit = up.wait_exit().await?;
    assert!(exit.success(), "{exit}: {}", up.output("stderr"));
    assert!(
        has_line(&up.output("stderr"), "stopped"),
        "{}",
        up.output("stderr")
    );
    all_gone(&processes).await?;
    assert!(!up.dir.join("ready").exists());
    assert!(!up.dir.join("testenv.pid").exists());
    Ok(())
}

#[tokio::test]
async fn up_refuses_a_second_environment_in_its_directory_and_down_stops_it() -> anyhow::Result<()>
{
    let up = Up::start(&["--remotes", "1"])?;
    up.wait_ready().await?;
    let dir = up.dir.display().to_string();
    let processes = Process::descendants(up.pid())?;
    let counts = count_by_command(&processes);
    assert_eq!(counts.get("kube-apiserver"), Some(&2), "{counts:?}");
    let testenv = mesh_e2e::mesh_testenv::workspace_binary("mesh-testenv")?;
    // `mesh-testenv <verb> --dir <dir>`: the environment this test started.
    let in_dir = |verb: &str| {
        let mut cmd = std::process::Command::new(&testenv);
        cmd.args([verb, "--dir", &dir]);
        cmd
    };

    let out = mesh_e2e::fixtures::output(in_dir("up")).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: an environment (pid {}) already runs in {dir}; stop it first: \
             mesh-testenv down --dir {dir}\n",
            up.pid()
        )
    );
    assert!(
        up.dir.join("ready").exists(),
        "the refused up left it alone"
    );

    // `down` waits until the pid is gone, and the pid of an exited child lasts until its parent
    // (this test, as a shell would) reaps it: reap while `down` waits.
    let (out, exit) = tokio::join!(run(in_dir("down")), up.wait_exit());
    assert_eq!(
        text(&out?.stdout),
        format!("stopped the environment in {dir}\n")
    );
    assert!(exit?.success(), "{}", up.output("stderr"));
    all_gone(&processes).await?;

    let out = mesh_e2e::fixtures::output(in_dir("down")).await?;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(
        text(&out.stderr),
        format!("error: no environment runs in {dir}; nothing to stop\n")
    );
    Ok(())
}
