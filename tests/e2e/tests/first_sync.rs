//! No surprises on attach: the preview of the first sync is what the first sync does, a
//! first sync that takes labels away is confirmed (or refused without a terminal, cancelled by
//! a "no"), per-cluster scopes spare the remote's own namespaces and change without a webhook
//! restart, `plan` says whether a sync would write, and adoption copies the remote's labels to
//! the primary.
//!
//! One mesh of its own, its remotes not attached at the start; the tests take turns (one of
//! them stops the webhook for a moment).

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use kubectl_mesh::cmd::attach::hooks::STALLED;
use mesh_core::cluster::MeshCluster;
use mesh_e2e::fixtures::output;
use mesh_e2e::mesh_testenv::mesh::{Mesh, MeshOptions};
use mesh_e2e::mesh_testenv::{Cluster, TestEnv};
use mesh_e2e::signals::signalled_after_doing;
use mesh_e2e::{
    DEFAULT_TIMEOUT, create_labelled_namespace, describe, eventually, label_namespace, labels,
    managed_labels, own_mesh_with, relabel_until, text, unique_name,
};
use serde_json::Value;
use tokio::sync::{MutexGuard, OnceCell};

type Labels = BTreeMap<String, String>;

/// The mesh of the binary, and the calling test's turn with it until the guard is dropped:
/// the tests take turns, as one stops the webhook and `plan` covers every attached cluster.
async fn turn() -> (MutexGuard<'static, ()>, &'static TestEnv, &'static Mesh) {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static MESH: OnceCell<(TestEnv, Mesh)> = OnceCell::const_new();
    let turn = TURN.lock().await;
    let start = async {
        let mut options = MeshOptions::from_workspace()?;
        options.attach_remotes = false;
        own_mesh_with(2, options).await
    };
    let (env, mesh) = mesh_e2e::shared(&MESH, "the mesh", start).await;
    (turn, env, mesh)
}

/// `kubectl mesh <args>` against the primary, with no terminal on stdin.
async fn plugin(mesh: &Mesh, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd: Command = mesh.plugin();
    cmd.args(args).env("NO_COLOR", "1").stdin(Stdio::null());
    output(cmd).await
}

async fn succeeded(mesh: &Mesh, args: &[&str]) -> anyhow::Result<Output> {
    let out = plugin(mesh, args).await?;
    ensure!(out.status.success(), "{args:?}: {}", describe(&out));
    Ok(out)
}

/// `kubectl label ns <name> <args> --overwrite` on `cluster`; returns kubectl's stderr (the
/// guard's warnings).
async fn kubectl_label(
    env: &TestEnv,
    cluster: &Cluster,
    name: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let out = label_namespace(env, cluster, name, args).await?;
    ensure!(out.status.success(), "{}", describe(&out));
    Ok(text(&out.stderr))
}

async fn managed(cluster: &Cluster, name: &str) -> anyhow::Result<Labels> {
    managed_labels(cluster, name)
        .await?
        .with_context(|| format!("{name} missing on {}", cluster.name))
}

async fn is_attached(env: &TestEnv, name: &str) -> anyhow::Result<bool> {
    Ok(Api::<MeshCluster>::all(env.primary().client().await?)
        .get_opt(name)
        .await?
        .is_some())
}

/// Every distinct managed-label state each `prefix` namespace of `cluster` goes through, as a
/// watch sees them, from now on.
fn record(cluster: &Cluster, prefix: &str) -> Arc<Mutex<BTreeMap<String, Vec<Labels>>>> {
    let seen: Arc<Mutex<BTreeMap<String, Vec<Labels>>>> = Arc::default();
    let (cluster, prefix, sink) = (cluster.clone(), prefix.to_owned(), seen.clone());
    tokio::spawn(async move {
        let Ok(client) = cluster.client().await else {
            return;
        };
        let mut events = watcher(Api::<Namespace>::all(client), watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(ns)) = events.next().await {
            let name = ns.name_any();
            if !name.starts_with(&prefix) {
                continue;
            }
            let now: Labels = (ns.labels().iter())
                .filter(|(k, _)| k.starts_with("istio"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut seen = sink.lock().expect("lock");
            let states = seen.entry(name).or_default();
            if states.last() != Some(&now) {
                states.push(now);
            }
        }
    });
    seen
}

/// `before` with a preview change applied (`add`, `change`, `remove` of `-o json`).
fn applied(before: &Labels, change: &Value) -> Labels {
    let mut after = before.clone();
    for (key, value) in change["add"].as_object().into_iter().flatten() {
        after.insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
    }
    for (key, value) in change["change"].as_object().into_iter().flatten() {
        after.insert(
            key.clone(),
            value["to"].as_str().unwrap_or_default().to_owned(),
        );
    }
    for key in change["remove"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        after.remove(key);
    }
    after
}

fn json(out: &Output) -> anyhow::Result<Value> {
    serde_json::from_slice(&out.stdout).with_context(|| describe(out))
}

/// The first sync writes exactly what the preview said; it asks first (and refuses without a
/// terminal); an excluded remote namespace keeps its labels; `plan` exits 0 when converged
/// and 2 after an edit on the remote; scope changes take effect at once, the guard with them.
#[tokio::test]
async fn preview_is_what_the_first_sync_does_and_scope_spares_the_remote_s_own()
-> anyhow::Result<()> {
    let (_turn, env, mesh) = turn().await;
    let remote = &env.remotes()[0];
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let p = unique_name("fs");
    let [shop, pay, batch, gw] = ["shop", "pay", "batch", "gw"].map(|n| format!("{p}-{n}"));
    create_labelled_namespace(env.primary(), &shop, &[("istio-injection", "enabled")]).await?;
    create_labelled_namespace(env.primary(), &pay, &[("istio.io/rev", "stable")]).await?;
    create_labelled_namespace(env.primary(), &batch, &[]).await?;
    create_labelled_namespace(remote, &shop, &[]).await?;
    create_labelled_namespace(remote, &pay, &[("istio.io/rev", "canary")]).await?;
    create_labelled_namespace(remote, &batch, &[("istio-injection", "enabled")]).await?;
    create_labelled_namespace(remote, &gw, &[("istio-injection", "enabled")]).await?;
    let mut before = BTreeMap::new();
    for ns in [&shop, &pay, &batch, &gw] {
        before.insert(ns.clone(), managed(remote, ns).await?);
    }

    // Without a terminal and without --yes: refused in one line, nothing changed anywhere.
    let attach = ["attach", kubeconfig.as_str(), "--name", "remote-1"];
    let out = plugin(mesh, &attach).await?;
    ensure!(!out.status.success(), "{}", describe(&out));
    let last = text(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        last.starts_with("error: ") && last.contains(&batch) && last.contains("--yes"),
        "{last}"
    );
    ensure!(
        !is_attached(env, "remote-1").await?,
        "a refused attach recorded the cluster"
    );
    for ns in [&shop, &pay, &batch, &gw] {
        ensure!(
            managed(remote, ns).await? == before[ns],
            "{ns} changed by a refused attach"
        );
    }

    // The preview, as scripts read it.
    let excluded = ["--exclude-namespaces", gw.as_str()];
    let dry = [&attach[..], &excluded, &["--dry-run", "-o", "json"]].concat();
    let preview = json(&succeeded(mesh, &dry).await?)?["firstSync"].clone();
    let ours = |list: &Value| -> Vec<String> {
        (list.as_array().into_iter().flatten())
            .filter_map(|v| v.as_str().or(v["namespace"].as_str()))
            .filter(|n| n.starts_with(&p))
            .map(str::to_owned)
            .collect()
    };
    ensure!(
        ours(&preview["changes"]) == [batch.clone(), pay.clone(), shop.clone()],
        "{preview}"
    );
    ensure!(ours(&preview["outOfScope"]) == [gw.clone()], "{preview}");
    let expected: BTreeMap<String, Labels> = (preview["changes"].as_array().into_iter().flatten())
        .filter_map(|c| Some((c["namespace"].as_str()?.to_owned(), c)))
        .filter(|(n, _)| n.starts_with(&p))
        .map(|(n, c)| {
            let after = applied(&before[&n], c);
            (n, after)
        })
        .collect();

    // The first sync, watched: each namespace goes straight from before to the preview's
    // after, and nothing else moves.
    let seen = record(remote, &p);
    let attached = [&attach[..], &excluded, &["--yes", "--wait"]].concat();
    succeeded(mesh, &attached).await?;
    eventually("the first sync as previewed", DEFAULT_TIMEOUT, || async {
        for (ns, after) in &expected {
            let now = managed(remote, ns).await?;
            ensure!(&now == after, "{ns}: {now:?}, previewed {after:?}");
        }
        Ok(Some(()))
    })
    .await?;
    {
        let seen = seen.lock().expect("lock");
        for (ns, after) in &expected {
            let states = seen.get(ns).cloned().unwrap_or_default();
            let path: Vec<&Labels> = states.iter().collect();
            ensure!(
                path == [&before[ns], after] || path == [after],
                "{ns} went through {states:?}"
            );
        }
        let gw_states = seen.get(&gw).cloned().unwrap_or_default();
        ensure!(
            gw_states.iter().all(|s| s == &before[&gw]),
            "{gw}: {gw_states:?}"
        );
    }

    // plan: converged, then an edit on the remote while no webhook corrects it.
    let out = plugin(mesh, &["plan"]).await?;
    ensure!(out.status.code() == Some(0), "{}", describe(&out));
    mesh.stop_webhook(env)?;
    kubectl_label(env, remote, &shop, &["istio-injection=disabled"]).await?;
    let out = plugin(mesh, &["plan", "-o", "json"]).await?;
    mesh.start_webhook(env).await?;
    ensure!(out.status.code() == Some(2), "{}", describe(&out));
    ensure!(
        json(&out)?.to_string().contains(&shop),
        "{}",
        describe(&out)
    );
    eventually("the remote edit reverted", DEFAULT_TIMEOUT, || async {
        ensure!(managed(remote, &shop).await? == labels(&[("istio-injection", "enabled")]));
        Ok(Some(()))
    })
    .await?;

    // A scope change takes effect without a restart: cleared, gw is synced (its label goes).
    let scope = [
        "scope",
        "remote-1",
        "--remote-kubeconfig",
        kubeconfig.as_str(),
    ];
    succeeded(mesh, &[&scope[..], &["--clear"]].concat()).await?;
    eventually("gw stripped once in scope", DEFAULT_TIMEOUT, || async {
        ensure!(managed(remote, &gw).await?.is_empty());
        Ok(Some(()))
    })
    .await?;
    // Excluded again: the guard spares gw and still guards shop; a full sync later, gw keeps
    // what the remote's admin set.
    succeeded(
        mesh,
        &[&scope[..], &["--exclude-namespaces", gw.as_str()]].concat(),
    )
    .await?;
    let show = succeeded(mesh, &["scope", "remote-1"]).await?;
    ensure!(
        text(&show.stdout).trim() == format!("not {gw}"),
        "{}",
        describe(&show)
    );
    // The webhook syncs by the new scope once a sync reports the MeshCluster's generation;
    // the apiserver loads the changed guard a moment after it is written.
    eventually("the webhook on the new scope", DEFAULT_TIMEOUT, || async {
        let mc = Api::<MeshCluster>::all(env.primary().client().await?)
            .get("remote-1")
            .await?;
        let observed = mc.status.and_then(|s| s.observed_generation);
        ensure!(observed == mc.metadata.generation, "observed {observed:?}");
        Ok(Some(()))
    })
    .await?;
    relabel_until(
        env,
        remote,
        &gw,
        "the guard sparing gw",
        |probe| vec![format!("istio-injection=probe-{probe}")],
        |out| {
            let gw = &gw;
            async move {
                ensure!(out.status.success(), "{}", describe(&out));
                let warned = text(&out.stderr);
                ensure!(
                    !warned.contains("managed by kubectl-mesh"),
                    "guard covers {gw}: {warned}"
                );
                Ok(Some(()))
            }
        },
    )
    .await?;
    kubectl_label(env, remote, &gw, &["istio-injection=enabled"]).await?;
    let edited_at = k8s_openapi::jiff::Timestamp::now();
    let warned = kubectl_label(env, remote, &shop, &["istio-injection=disabled"]).await?;
    ensure!(
        warned.contains("managed by kubectl-mesh"),
        "guard left {shop}: {warned}"
    );
    eventually("a full sync after the edits", DEFAULT_TIMEOUT, || async {
        let mc = Api::<MeshCluster>::all(env.primary().client().await?)
            .get("remote-1")
            .await?;
        let synced = (mc.status.and_then(|s| s.last_sync_time))
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
        ensure!(
            synced.is_some_and(|t| t > edited_at),
            "last sync {synced:?}"
        );
        ensure!(managed(remote, &shop).await? == labels(&[("istio-injection", "enabled")]));
        Ok(Some(()))
    })
    .await?;
    ensure!(
        managed(remote, &gw).await? == labels(&[("istio-injection", "enabled")]),
        "{gw} written although out of scope"
    );
    Ok(())
}

/// `kubectl-mesh <args>` on a pseudo-terminal (script(1)), `answer` typed in; its output.
async fn on_terminal(
    mesh: &Mesh,
    env: &TestEnv,
    args: &[&str],
    answer: &str,
) -> anyhow::Result<Output> {
    let plugin = mesh.plugin().get_program().to_string_lossy().into_owned();
    let line = format!(
        "{plugin} --kubeconfig {} {}",
        env.primary().kubeconfig.display(),
        args.join(" ")
    );
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("NO_COLOR", "1");
    let mut script = tokio::process::Command::from(script);
    script
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = script.spawn().context("running script(1)")?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(format!("{answer}\n").as_bytes()).await?;
    }
    Ok(child.wait_with_output().await?)
}

/// On a terminal, "n" cancels and changes nothing, "y" goes on and the remote-only labelled
/// namespace is stripped; adoption copies the remote's labels to the primary where it has
/// none (and a failure after it takes them off again); a selector scope leaves unselected
/// namespaces alone, and status and sync show them as out of scope.
#[tokio::test]
async fn a_no_cancels_a_yes_strips_adoption_copies_and_a_selector_spares() -> anyhow::Result<()> {
    let (_turn, env, mesh) = turn().await;
    let remote = &env.remotes()[1];
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    let q = unique_name("ad");
    let [legacy, app, infra, old] = ["legacy", "app", "infra", "old"].map(|n| format!("{q}-{n}"));
    let enabled = || labels(&[("istio-injection", "enabled")]);
    create_labelled_namespace(env.primary(), &legacy, &[]).await?;
    create_labelled_namespace(env.primary(), &app, &[("istio-injection", "enabled")]).await?;
    create_labelled_namespace(remote, &legacy, &[("istio-injection", "enabled")]).await?;
    create_labelled_namespace(remote, &app, &[]).await?;
    create_labelled_namespace(
        remote,
        &infra,
        &[("platform", "owned"), ("istio-injection", "enabled")],
    )
    .await?;
    create_labelled_namespace(remote, &old, &[("istio-injection", "enabled")]).await?;
    let attach = [
        "attach",
        kubeconfig.as_str(),
        "--name",
        "remote-2",
        "--namespace-selector",
        "platform!=owned",
        "--adopt-remote-labels",
    ];

    // "n" cancels: nothing anywhere.
    let out = on_terminal(mesh, env, &attach, "n").await?;
    let said = text(&out.stdout);
    ensure!(!out.status.success(), "{}", describe(&out));
    ensure!(
        said.contains(&old) && said.contains("Attach anyway? [y/N]"),
        "{said}"
    );
    ensure!(
        said.contains("attach cancelled; nothing was changed"),
        "{said}"
    );
    ensure!(
        !is_attached(env, "remote-2").await?,
        "a cancelled attach recorded the cluster"
    );
    ensure!(
        managed(env.primary(), &legacy).await?.is_empty(),
        "adopted by a cancelled attach"
    );
    ensure!(managed(remote, &old).await? == enabled());

    // A failure after the adoption takes the adopted labels off the primary again.
    let mut failing: Command = mesh.plugin();
    failing
        .args(attach)
        .arg("--yes")
        .env("KUBECTL_MESH_FAIL_AFTER", "adopt-labels")
        .stdin(Stdio::null());
    let out = output(failing).await?;
    ensure!(!out.status.success(), "{}", describe(&out));
    let err = text(&out.stderr);
    ensure!(
        err.contains("failed at step adopt-labels and was rolled back"),
        "(the test hooks need `cargo build --workspace --bins`) {err}"
    );
    ensure!(
        managed(env.primary(), &legacy).await?.is_empty(),
        "adoption not rolled back"
    );
    ensure!(!is_attached(env, "remote-2").await?);

    // The preview lists the adoption; "y" goes on.
    let dry = [&attach[..], &["--dry-run", "-o", "json"]].concat();
    let dry = json(&succeeded(mesh, &dry).await?)?;
    let adopt = dry["firstSync"]["adopt"].to_string();
    ensure!(adopt.contains(&legacy) && !adopt.contains(&app), "{adopt}");
    let out = on_terminal(mesh, env, &[&attach[..], &["--wait"]].concat(), "y").await?;
    ensure!(out.status.success(), "{}", describe(&out));
    ensure!(
        managed(env.primary(), &legacy).await? == enabled(),
        "not adopted on the primary"
    );
    eventually(
        "app synced, old stripped, legacy and infra kept",
        DEFAULT_TIMEOUT,
        || async {
            ensure!(managed(remote, &app).await? == enabled());
            ensure!(managed(remote, &old).await?.is_empty());
            ensure!(managed(remote, &legacy).await? == enabled());
            ensure!(managed(remote, &infra).await? == enabled());
            Ok(Some(()))
        },
    )
    .await?;
    let status = json(&succeeded(mesh, &["status", &infra, "-o", "json"]).await?)?;
    let cell = &status["namespaces"][0]["clusters"]["remote-2"]["state"];
    ensure!(cell == "out-of-scope", "{status}");
    // `sync` names what the scope leaves alone, in its summary and in JSON.
    let sync = ["sync", "--cluster", "remote-2"];
    let synced = json(&succeeded(mesh, &[&sync[..], &["-o", "json"]].concat()).await?)?;
    let spared = synced["outOfScope"].to_string();
    ensure!(
        spared.contains(&infra) && !spared.contains(&app),
        "{synced}"
    );
    let summary = text(&succeeded(mesh, &sync).await?.stdout);
    ensure!(summary.contains("out of scope ("), "{summary}");
    Ok(())
}

/// A run with --adopt-remote-labels interrupted once its MeshCluster existed and the webhook
/// reached the cluster: the rollback took the adopted labels back off the primary first, so
/// the webhook pushed their removal to the remote they came from, which lost its own labels.
/// They now go once the MeshCluster and the remote's sync account are deleted.
#[tokio::test]
async fn an_interrupted_adoption_leaves_the_remote_its_own_labels() -> anyhow::Result<()> {
    let (_turn, env, mesh) = turn().await;
    let remote = &env.remotes()[1];
    let kubeconfig = remote.kubeconfig.to_string_lossy().into_owned();
    if is_attached(env, "remote-2").await? {
        let detach = ["detach", "remote-2", "--remote-kubeconfig", &kubeconfig];
        succeeded(mesh, &detach).await?;
    }
    let own = unique_name("own");
    let enabled = labels(&[("istio-injection", "enabled")]);
    create_labelled_namespace(env.primary(), &own, &[]).await?;
    create_labelled_namespace(remote, &own, &[("istio-injection", "enabled")]).await?;

    let mut attach: Command = mesh.plugin();
    attach
        .args(["attach", &kubeconfig, "--name", "remote-2"])
        .args(["--adopt-remote-labels", "--yes"])
        .env("KUBECTL_MESH_STALL_IN", "mesh-cluster")
        .stdin(Stdio::null());
    // Interrupted once the webhook reaches the cluster: a push to it would land.
    let reached = async { mesh_e2e::reachable(env, "remote-2").await.map(drop) };
    let (seen, status) =
        signalled_after_doing(attach, STALLED, reached, "INT", DEFAULT_TIMEOUT).await?;
    let seen = seen.join("\n");
    ensure!(!status.success(), "{seen}");
    ensure!(
        seen.contains("failed at step mesh-cluster and was rolled back"),
        "{seen}"
    );
    ensure!(!is_attached(env, "remote-2").await?, "{seen}");
    ensure!(
        managed(env.primary(), &own).await?.is_empty(),
        "adoption not rolled back: {seen}"
    );
    ensure!(
        managed(remote, &own).await? == enabled,
        "the remote lost its own labels: {seen}"
    );
    Ok(())
}
