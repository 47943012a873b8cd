//! `kubectl mesh dashboard` in a real browser: the plugin serves the page against a real
//! mesh, headless Chromium renders it, and the test reads the rendered DOM. A label change on
//! the primary shows within seconds (pushed, the page is never reloaded), a remote label
//! edited by hand shows as the webhook's correction Event, a frozen remote shows as
//! unreachable and then reachable again, one whose stored kubeconfig no longer names the
//! recorded server as not read (not unreachable), a frozen primary as unreadable until it
//! answers again,
//! a cluster being detached as such, a remote whose credentials are rotated under the page
//! is still read (with the new ones), a request for a foreign host is refused, and so is a
//! request for data without the token of the URL the dashboard printed; a connection that
//! asks nothing is closed. More pages than a browser opens connections to one server all
//! show the mesh live; while a page takes over the stream of one that closed, every page says
//! it is connecting, and a page's question for the current snapshot is answered to it alone.
//! In a quiet mesh, which sends no new snapshot, the age of a cluster's last sync grows.
//! Screenshots go to the target directory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mesh_e2e::browser::{Browser, Page};
use mesh_e2e::{create_everywhere, describe, kubectl_apply, label_on_primary, shared_mesh};
use mesh_testenv::TestEnv;
use mesh_testenv::mesh::Mesh;
use tokio::io::AsyncReadExt as _;
use tokio::sync::{Mutex, MutexGuard};

/// How long a change may take to show on the page: the webhook's push, the watch, the
/// snapshot's settle time and the page's rendering, on a busy machine.
const SHOWS_WITHIN: Duration = Duration::from_secs(10);
/// Reachability is probed every 2s with a 3s deadline.
const UNREACHABLE_WITHIN: Duration = Duration::from_secs(20);
/// Services created to fill more than the first page the page is sent (500 rows).
const MANY_SERVICES: usize = 510;
/// How long a watch lasts before it is made again (`remote::WATCH_SECONDS`, 50 s) and then
/// some: past it, a watch made with a revoked token would be refused.
const WATCHES_MADE_AGAIN_WITHIN: Duration = Duration::from_secs(60);
/// How long the page may take to show a last sync's age grow within one snapshot: it reckons
/// ages every second, and a snapshot that comes meanwhile starts the count again.
const AGES_GROW_WITHIN: Duration = Duration::from_secs(30);
/// How much older the page must show a last sync within one snapshot: enough that a page
/// sent that snapshot later and showing the snapshot's age rather than now's is seen to.
const GROWN_BY: u32 = 3;
/// How long after a frozen primary answers again the page may still say it cannot be read: a
/// failed watch is started again within 30 s (`live::WATCH_RETRY_MAX`), then lists.
const READ_AGAIN_WITHIN: Duration = Duration::from_secs(45);

/// The shared mesh, one test at a time: the first freezes clusters and rotates credentials
/// under its page.
async fn serial_mesh() -> (MutexGuard<'static, ()>, &'static TestEnv, &'static Mesh) {
    static LOCK: Mutex<()> = Mutex::const_new(());
    let guard = LOCK.lock().await;
    let (env, mesh) = shared_mesh(2).await;
    (guard, env, mesh)
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

/// The answer to a raw HTTP/1.1 request for `target` with this Host header (another host's,
/// to be refused): its status line and its body, within 10 s.
async fn get(port: u16, host: &str, target: &str) -> anyhow::Result<(String, String)> {
    let answer = mesh_testenv::http::get(port, host, target);
    tokio::time::timeout(Duration::from_secs(10), answer).await?
}

/// Waits until `expression` (JavaScript) is true in the page; returns how long it took.
async fn until(
    browser: &mut Browser,
    what: &str,
    within: Duration,
    expression: &str,
) -> anyhow::Result<Duration> {
    until_in(browser, None, what, within, expression).await
}

/// [`until`] in `page`, the browser's first page when `None`.
async fn until_in(
    browser: &mut Browser,
    page: Option<&Page>,
    what: &str,
    within: Duration,
    expression: &str,
) -> anyhow::Result<Duration> {
    let eval = async |browser: &mut Browser, expression: &str| match page {
        Some(page) => browser.eval_in(page, expression).await,
        None => browser.eval(expression).await,
    };
    let start = Instant::now();
    let deadline = start + within;
    // Before the page has loaded (or rendered a row) the expression may throw: not yet.
    let guarded =
        format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()");
    loop {
        let value = eval(browser, &guarded).await?;
        if value == serde_json::Value::Bool(true) {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            let page = eval(browser, "document.body.innerText").await?;
            anyhow::bail!(
                "{what}: not true within {within:?}; the page reads:\n{}",
                page.as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`until_in`] each of `pages` in turn, each within `within`; `what` says what is awaited.
async fn until_every(
    browser: &mut Browser,
    pages: &[Page],
    what: &str,
    within: Duration,
    expression: &str,
) -> anyhow::Result<()> {
    for (i, page) in pages.iter().enumerate() {
        let what = format!("page {} of {} {what}", i + 1, pages.len());
        until_in(browser, Some(page), &what, within, expression).await?;
    }
    Ok(())
}

/// [`until`] a change shows on the page, within [`SHOWS_WITHIN`].
async fn until_shown(
    browser: &mut Browser,
    what: &str,
    expression: &str,
) -> anyhow::Result<Duration> {
    until(browser, what, SHOWS_WITHIN, expression).await
}

/// The text of the matrix cell of `ns` on `cluster`, as JavaScript.
fn cell(ns: &str, cluster: &str) -> String {
    format!(
        r#"(document.querySelector('#matrix td[data-ns="{ns}"][data-cluster="{cluster}"]') || {{}}).textContent"#
    )
}

/// Whether the matrix cells of `ns` on both `clusters` show `value`, as JavaScript.
fn both_show(ns: &str, clusters: [&str; 2], value: &str) -> String {
    let [a, b] = clusters;
    format!(
        "{} === '{value}' && {} === '{value}'",
        cell(ns, a),
        cell(ns, b)
    )
}

/// `kubectl patch` of the MeshCluster `name` on the primary with this JSON merge patch.
async fn patch_cluster(env: &TestEnv, name: &str, patch: &str) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::from(env.kubectl(env.primary()));
    cmd.args([
        "patch",
        "meshclusters.kubectl-mesh.io",
        name,
        "--type",
        "merge",
        "-p",
        patch,
    ]);
    let out = cmd.output().await?;
    anyhow::ensure!(out.status.success(), "patch {name}: {}", describe(&out));
    Ok(())
}

/// The server the MeshCluster `name` records (`spec.server`).
async fn cluster_server(env: &TestEnv, name: &str) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::from(env.kubectl(env.primary()));
    cmd.args([
        "get",
        "meshclusters.kubectl-mesh.io",
        name,
        "-o",
        "jsonpath={.spec.server}",
    ]);
    let out = cmd.output().await?;
    anyhow::ensure!(out.status.success(), "get {name}: {}", describe(&out));
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn the_dashboard_shows_the_mesh_live_in_a_real_browser() -> anyhow::Result<()> {
    let (_serial, env, mesh) = serial_mesh().await;
    let remote_1 = &env.remotes()[0];
    let out = mesh.attach_with(remote_1, &["--services-view"]).await?;
    anyhow::ensure!(out.status.success(), "attach: {}", describe(&out));
    let ns = create_everywhere(env, "dash").await?;

    let mut dashboard = mesh.dashboard(Stdio::inherit()).await?;
    let (url, port) = (dashboard.url.clone(), dashboard.port);

    // DNS rebinding: a request naming another host is refused; its own address is served.
    let own = format!("127.0.0.1:{port}");
    let (refused, _) = get(port, &format!("attacker.example:{port}"), "/").await?;
    assert!(refused.contains(" 403 "), "{refused}");
    let (served, _) = get(port, &own, "/").await?;
    assert!(served.contains(" 200 "), "{served}");
    // A connection that asks nothing is closed (the header read timeout, 10 s), checked
    // while the rest goes on.
    let silent = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut sent = Vec::new();
        // Closed or reset: either way it is gone.
        let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut sent))
            .await
            .context("a connection that asked nothing was still open after 15s")?;
        anyhow::Ok(())
    });
    // Another local user, who can find the port but not the token: no data.
    let wrong = "0".repeat(dashboard.token.len());
    for target in [
        "/state.json".to_owned(),
        format!("/state.json?token={wrong}"),
        "/services.json".to_owned(),
        "/events".to_owned(),
    ] {
        let (refused, body) = get(port, &own, &target).await?;
        assert!(refused.contains(" 403 "), "{target}: {refused}");
        assert!(!body.contains("clusters"), "{target}: {body}");
    }
    // With it, the data; apiserver URLs, which the page does not show, are not in it.
    let state = format!("/state.json?token={}", dashboard.token);
    let read = Instant::now() + Duration::from_secs(60);
    let state: serde_json::Value = loop {
        let (status, body) = get(port, &own, &state).await?;
        if status.contains(" 200 ") {
            break serde_json::from_str(&body)?;
        }
        anyhow::ensure!(Instant::now() < read, "{state}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let clusters = state["clusters"].as_array().context("no clusters")?;
    assert!(!clusters.is_empty(), "{state}");
    assert!(
        clusters.iter().all(|c| c.get("server").is_none()),
        "{state}"
    );

    let mut browser = Browser::start(1400, 1000, &shots().join("chromium.log")).await?;
    browser.navigate(&url).await?;
    until(
        &mut browser,
        "the page is live",
        Duration::from_secs(60),
        "document.querySelector('#connection').dataset.state === 'live'",
    )
    .await?;
    // The token left the address bar (and is not in what a copied link would carry).
    assert_eq!(
        browser.eval("location.href").await?,
        serde_json::Value::String(format!("http://127.0.0.1:{port}/"))
    );
    until(
        &mut browser,
        "every remote shows as reachable",
        UNREACHABLE_WITHIN,
        r#"['remote-1', 'remote-2'].every(n => (document.querySelector(`#clusters tr[data-cluster="${n}"]`) || {dataset: {}}).dataset.reachability === 'reachable')"#,
    )
    .await?;

    // A label change on the primary appears without a reload, on the primary and, once the
    // webhook pushed it, on the remotes.
    browser.eval("window.__loaded = Date.now(); true").await?;
    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    let took = until_shown(
        &mut browser,
        "the label shows on the primary",
        &format!("{} === 'istio-injection=enabled'", cell(&ns, "primary")),
    )
    .await?;
    println!("the label showed on the page {took:?} after kubectl returned");
    until_shown(
        &mut browser,
        "the label shows on every remote, in sync",
        &both_show(&ns, ["remote-1", "remote-2"], "istio-injection=enabled"),
    )
    .await?;
    assert_eq!(
        browser.eval("typeof window.__loaded === 'number'").await?,
        serde_json::Value::Bool(true),
        "the page was reloaded"
    );

    // A Service on the primary and remote-1 shows in the services table; remote-2, without
    // view credentials, says so.
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  ports:\n  - name: http\n    port: 80\n"
    );
    for cluster in [env.primary(), remote_1] {
        kubectl_apply(env, cluster, &yaml).await?;
    }
    let row = format!(r#"document.querySelector('#services tr[data-service="{ns}/web"]')"#);
    until_shown(
        &mut browser,
        "the service shows on both clusters",
        &format!(
            r#"(() => {{ const r = {row}; if (!r) return false;
                const c = n => r.querySelector(`td[data-cluster="${{n}}"]`).textContent;
                return c('primary').startsWith('0 ready (injected)') && c('remote-1').startsWith('0 ready (injected)')
                    && c('remote-2') === '(no view credentials)'; }})()"#
        ),
    )
    .await?;

    // Past the first page: a snapshot carries the first 500 services only; a filter asks the
    // server, which finds a service beyond them. Headless: the service range is a /24.
    let many: String = (0..MANY_SERVICES)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: page-{i:03}\n  namespace: {ns}\nspec:\n  clusterIP: None\n  ports:\n  - port: 80\n"
            )
        })
        .collect();
    kubectl_apply(env, env.primary(), &many).await?;
    let last = format!("{ns}/page-{:03}", MANY_SERVICES - 1);
    until(
        &mut browser,
        "the first page of services shows, the rest counted",
        Duration::from_secs(30),
        r#"document.querySelectorAll('#services tbody tr').length === 500
            && document.querySelector('#services-more').textContent.endsWith('more services; filter to narrow')"#,
    )
    .await?;
    assert_eq!(
        browser
            .eval(&format!(
                r#"!document.querySelector('#services tr[data-service="{last}"]')"#
            ))
            .await?,
        serde_json::Value::Bool(true),
        "{last} is past the first page"
    );
    let filter = |text: &str| {
        format!(
            "(() => {{ const f = document.getElementById('filter'); f.value = '{text}'; \
             f.dispatchEvent(new Event('input')); return true; }})()"
        )
    };
    // What each filter text shows.
    let filtered = [
        (
            last.clone(),
            "the filter finds a service past the first page",
            format!(
                r#"(() => {{ const rows = document.querySelectorAll('#services tbody tr');
                return rows.length === 1 && rows[0].dataset.service === '{last}'
                    && rows[0].querySelector('td[data-cluster="primary"]').textContent.startsWith('0 ready (injected)')
                    && document.querySelector('#services-more').textContent === '1 services'; }})()"#
            ),
        ),
        (
            format!("{ns}/page-"),
            "a filter matching many counts them all",
            format!(
                "document.querySelectorAll('#services tbody tr').length === 500 \
             && document.querySelector('#services-more').textContent === '{} more services; filter to narrow'",
                MANY_SERVICES - 500
            ),
        ),
    ];
    for (text, what, shown) in filtered {
        browser.eval(&filter(&text)).await?;
        until_shown(&mut browser, what, &shown).await?;
    }
    browser.eval(&filter("")).await?;

    // A managed label edited by hand on a remote: the webhook corrects it and its Event shows.
    let mut edit = tokio::process::Command::from(env.kubectl(remote_1));
    edit.args([
        "label",
        "namespace",
        &ns,
        "istio-injection=disabled",
        "--overwrite",
    ]);
    let out = edit.output().await?;
    anyhow::ensure!(
        out.status.success(),
        "label on remote-1: {}",
        describe(&out)
    );
    until(
        &mut browser,
        "the correction Event shows",
        Duration::from_secs(30),
        &format!(
            r#"[...document.querySelectorAll('#events tr[data-reason="RemoteLabelsCorrected"]')].some(r => r.textContent.includes('{ns}'))"#
        ),
    )
    .await?;
    browser.screenshot(&shots().join("dashboard.png")).await?;

    // `kubectl mesh rotate remote-1` while the page is open: the stored and view Secrets keep
    // their names and get new tokens, the old ones revoked. Once every watch had to be made
    // again, a label pushed to remote-1 still shows there, and its services are still read.
    let mut rotate = tokio::process::Command::from(mesh.plugin());
    rotate
        .args(["rotate", "remote-1", "--remote-kubeconfig"])
        .arg(&remote_1.kubeconfig)
        .env("NO_COLOR", "1");
    let out = rotate.output().await?;
    anyhow::ensure!(out.status.success(), "rotate remote-1: {}", describe(&out));
    tokio::time::sleep(WATCHES_MADE_AGAIN_WITHIN).await;
    label_on_primary(env, &ns, &["istio-injection=disabled"]).await?;
    until_shown(
        &mut browser,
        "after rotate, the label shows on remote-1, read with its new credentials",
        &both_show(&ns, ["primary", "remote-1"], "istio-injection=disabled"),
    )
    .await?;
    browser.eval(&filter(&format!("{ns}/web"))).await?;
    until_shown(
        &mut browser,
        "after rotate, remote-1's services are still read",
        &format!(
            r#"(() => {{ const r = document.querySelector('#services tr[data-service="{ns}/web"]');
                return !!r && r.querySelector('td[data-cluster="remote-1"]').textContent.startsWith('0 ready')
                    && document.querySelector('#clusters tr[data-cluster="remote-1"]').dataset.reachability === 'reachable'; }})()"#
        ),
    )
    .await?;
    browser.eval(&filter("")).await?;

    // A frozen remote shows as unreachable, then reachable again once it answers.
    env.pause_apiserver("remote-2")?;
    let frozen = until(
        &mut browser,
        "remote-2 shows as unreachable",
        UNREACHABLE_WITHIN,
        r#"(() => { const r = document.querySelector('#clusters tr[data-cluster="remote-2"]');
            return !!r && r.dataset.reachability === 'unreachable'
                && r.querySelector('.state-unreachable').textContent.startsWith('unreachable'); })()"#,
    )
    .await;
    let matrix = match &frozen {
        Ok(_) => {
            until_shown(
                &mut browser,
                "remote-2's matrix cells show as unreachable",
                &format!("{} === '(unreachable)'", cell(&ns, "remote-2")),
            )
            .await
        }
        Err(_) => Ok(Duration::ZERO),
    };
    let shot = browser
        .screenshot(&shots().join("dashboard-unreachable.png"))
        .await;
    env.resume_apiserver("remote-2").await?;
    frozen?;
    matrix?;
    shot?;
    until(
        &mut browser,
        "remote-2 shows as reachable again",
        UNREACHABLE_WITHIN,
        r#"document.querySelector('#clusters tr[data-cluster="remote-2"]').dataset.reachability === 'reachable'"#,
    )
    .await?;

    // A remote that answers but cannot be read (its stored kubeconfig no longer names the
    // server its MeshCluster records) shows as not read, as `status` says it, not as
    // unreachable; read again once the record is put back.
    let server = cluster_server(env, "remote-2").await?;
    patch_cluster(
        env,
        "remote-2",
        &serde_json::json!({"spec": {"server": format!("{server}/not-attached")}}).to_string(),
    )
    .await?;
    let not_read = until(
        &mut browser,
        "remote-2 shows as not read, its cells too",
        UNREACHABLE_WITHIN,
        &format!(
            r#"(() => {{ const r = document.querySelector('#clusters tr[data-cluster="remote-2"]');
                return !!r && r.dataset.reachability === 'not-read'
                    && r.querySelector('.state-not-read').textContent.startsWith('not read: ')
                    && {} === '(not read)'; }})()"#,
            cell(&ns, "remote-2")
        ),
    )
    .await;
    let shot = browser
        .screenshot(&shots().join("dashboard-not-read.png"))
        .await;
    patch_cluster(
        env,
        "remote-2",
        &serde_json::json!({"spec": {"server": server}}).to_string(),
    )
    .await?;
    not_read?;
    shot?;
    until(
        &mut browser,
        "remote-2 is read again once its record is put back",
        UNREACHABLE_WITHIN,
        r#"document.querySelector('#clusters tr[data-cluster="remote-2"]').dataset.reachability === 'reachable'"#,
    )
    .await?;

    // A reload keeps the page live: the token, out of the address bar, is kept for the tab.
    browser.eval("location.reload(); true").await?;
    until(
        &mut browser,
        "the page is live again after a reload",
        Duration::from_secs(30),
        "window.__loaded === undefined && document.querySelector('#connection').dataset.state === 'live'",
    )
    .await?;

    // A frozen primary: the watches fail within their read timeout and the page says the
    // primary cannot be read, rather than go on showing a picture that stopped.
    env.pause_apiserver("primary")?;
    let said = until(
        &mut browser,
        "the page says the primary cannot be read",
        mesh_core::remote::WATCH_READ_TIMEOUT + Duration::from_secs(30),
        "!document.getElementById('primary-error').hidden",
    )
    .await;
    env.resume_apiserver("primary").await?;
    said?;
    // Thawed, with no namespace changed: the page reads the primary again. kube's watcher
    // resumes a watch without an event; the error stayed until some namespace changed.
    let cleared = until(
        &mut browser,
        "the page reads the primary again, though no namespace changed",
        READ_AGAIN_WITHIN,
        "document.getElementById('primary-error').hidden",
    )
    .await?;
    println!("the primary's error went {cleared:?} after it answered again");

    // A cluster being detached (its MeshCluster deleted, held by someone else's finalizer):
    // nothing syncs it, and the page marks it so rather than show its drift as one the
    // webhook corrects. Last: the MeshCluster goes once the finalizer is removed.
    patch_cluster(
        env,
        "remote-2",
        r#"{"metadata":{"finalizers":["e2e.example/hold"]}}"#,
    )
    .await?;
    let mut delete = tokio::process::Command::from(env.kubectl(env.primary()));
    delete.args([
        "delete",
        "meshclusters.kubectl-mesh.io",
        "remote-2",
        "--wait=false",
    ]);
    let deleted = delete.output().await?;
    let marked = async {
        anyhow::ensure!(deleted.status.success(), "delete: {}", describe(&deleted));
        until_shown(
            &mut browser,
            "remote-2 shows as being detached",
            r#"document.querySelector('#clusters tr[data-cluster="remote-2"]').dataset.detaching === 'true'
                && document.querySelector('#matrix th[data-cluster="remote-2"]').textContent === 'remote-2 (detaching)'"#,
        )
        .await?;
        label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
        until_shown(
            &mut browser,
            "remote-1 is synced, remote-2's drift shows as not synced",
            &format!(
                r#"{} === 'istio-injection=enabled' && (() => {{
                    const c = document.querySelector('#matrix td[data-ns="{ns}"][data-cluster="remote-2"]');
                    return c.dataset.state === 'drifted' && c.classList.contains('state-detaching')
                        && !c.classList.contains('state-drifted'); }})()"#,
                cell(&ns, "remote-1")
            ),
        )
        .await?;
        browser
            .screenshot(&shots().join("dashboard-detaching.png"))
            .await
    }
    .await;
    patch_cluster(env, "remote-2", r#"{"metadata":{"finalizers":null}}"#).await?;
    marked?;
    until_shown(
        &mut browser,
        "remote-2, detached, is off the page",
        r#"!document.querySelector('#clusters tr[data-cluster="remote-2"]')"#,
    )
    .await?;

    silent.await??;
    // Through all of it the dashboard kept running.
    assert!(
        dashboard.process.try_wait()?.is_none(),
        "the dashboard exited"
    );
    Ok(())
}

/// A browser opens at most six connections to one server, and each page's event stream held
/// one for as long as the page was open: a seventh page of the dashboard loaded nothing at
/// all. The pages now share one stream, and every one shows a change live; once all but one
/// are closed, the streaming one among them, the last streams itself.
#[tokio::test]
async fn more_pages_than_a_browser_opens_connections_all_show_the_mesh_live() -> anyhow::Result<()>
{
    const PAGES: usize = 8;
    let (_serial, env, mesh) = serial_mesh().await;
    let ns = create_everywhere(env, "pages").await?;
    let dashboard = mesh.dashboard(Stdio::inherit()).await?;
    let mut browser = Browser::start(1000, 800, &shots().join("pages.log")).await?;
    let mut pages = Vec::new();
    for _ in 0..PAGES {
        pages.push(browser.open_page(&dashboard.url).await?);
    }
    let live = "document.querySelector('#connection').dataset.state === 'live'";
    let shows = |value: &str| format!("{} === 'istio-injection={value}'", cell(&ns, "primary"));
    let sixty = Duration::from_secs(60);
    until_every(&mut browser, &pages, "is live", sixty, live).await?;
    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    until_every(
        &mut browser,
        &pages,
        "shows the label",
        SHOWS_WITHIN,
        &shows("enabled"),
    )
    .await?;

    let last = pages.pop().context("no page")?;
    for page in pages {
        browser.close_page(page).await?;
    }
    label_on_primary(env, &ns, &["istio-injection=disabled"]).await?;
    let what = "the last page open shows a change made after the others closed";
    until_in(
        &mut browser,
        Some(&last),
        what,
        SHOWS_WITHIN,
        &shows("disabled"),
    )
    .await?;
    until_in(&mut browser, Some(&last), "it is live", SHOWS_WITHIN, live).await?;
    Ok(())
}

/// Every `/events` stream the dashboard serves at once (`server::Limits::event_streams`), held
/// open by another client: each has read the start of its first snapshot.
async fn hold_every_event_stream(
    port: u16,
    token: &str,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt as _;
    let mut held = Vec::new();
    for _ in 0..16 {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request =
            format!("GET /events?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut first = [0; 64];
        let read = tokio::time::timeout(SHOWS_WITHIN, stream.read(&mut first)).await??;
        let head = String::from_utf8_lossy(&first[..read]);
        anyhow::ensure!(head.starts_with("HTTP/1.1 200 "), "{head}");
        held.push(stream);
    }
    Ok(held)
}

/// The page streaming for the others kept its lock once the server refused its stream (too
/// many pages open elsewhere): no page tried again, and a page opened once there was room
/// waited for that lock for ever. Now the next page tries, and the page opened then streams
/// for them all.
#[tokio::test]
async fn pages_refused_a_stream_stream_again_once_the_server_has_room() -> anyhow::Result<()> {
    let (_serial, _env, mesh) = serial_mesh().await;
    let dashboard = mesh.dashboard(Stdio::inherit()).await?;
    let held = hold_every_event_stream(dashboard.port, &dashboard.token).await?;
    let mut browser = Browser::start(1000, 800, &shots().join("refused.log")).await?;
    let mut pages = Vec::new();
    for _ in 0..2 {
        pages.push(browser.open_page(&dashboard.url).await?);
    }
    let refused = "document.querySelector('#connection').dataset.state === 'refused'";
    until_every(&mut browser, &pages, "is refused", SHOWS_WITHIN, refused).await?;
    drop(held);
    pages.push(browser.open_page(&dashboard.url).await?);
    let live = "document.querySelector('#connection').dataset.state === 'live'";
    until_every(&mut browser, &pages, "is live", SHOWS_WITHIN, live).await?;
    Ok(())
}

/// Whether the page's connection reads `state`, as JavaScript.
fn connection_is(state: &str) -> String {
    format!("document.querySelector('#connection').dataset.state === '{state}'")
}

/// `count` pages of the dashboard at `url`, all live. The first is opened alone: it takes the
/// lock, and streams for the others until it closes.
async fn pages_behind_a_streaming_one(
    browser: &mut Browser,
    url: &str,
    count: usize,
) -> anyhow::Result<Vec<Page>> {
    let live = connection_is("live");
    let mut pages = vec![browser.open_page(url).await?];
    let first = "is live, streaming alone";
    until_every(browser, &pages, first, Duration::from_secs(60), &live).await?;
    for _ in 1..count {
        pages.push(browser.open_page(url).await?);
    }
    until_every(browser, &pages, "is live", SHOWS_WITHIN, &live).await?;
    Ok(pages)
}

/// Makes every event stream the page opens from now on deliver no snapshot until
/// `releaseStreams()`: a stream that has not answered yet, for as long as the test needs.
const HOLD_NEW_STREAMS: &str = r#"(() => {
    const held = [];
    let released = false;
    window.EventSource = class extends window.EventSource {
        addEventListener(type, listener, options) {
            const later = (event) => released ? listener(event) : held.push(() => listener(event));
            super.addEventListener(type, type === 'state' ? later : listener, options);
        }
    };
    window.releaseStreams = () => {
        released = true;
        held.splice(0).forEach((deliver) => deliver());
        return true;
    };
    return true;
})()"#;

/// When the page streaming for the others closed and another took over, the others went on
/// showing the last snapshot as live, however long the new stream took to answer: every page
/// says it is connecting until it answers.
#[tokio::test]
async fn pages_say_connecting_until_the_stream_of_a_page_taking_over_answers() -> anyhow::Result<()>
{
    let (_serial, _env, mesh) = serial_mesh().await;
    let dashboard = mesh.dashboard(Stdio::inherit()).await?;
    let mut browser = Browser::start(1000, 800, &shots().join("takeover.log")).await?;
    let mut pages = pages_behind_a_streaming_one(&mut browser, &dashboard.url, 3).await?;
    let streaming = pages.remove(0);
    for page in &pages {
        browser.eval_in(page, HOLD_NEW_STREAMS).await?;
    }
    browser.close_page(streaming).await?;
    let connecting = connection_is("connecting");
    let what = "says connecting while the new stream has not answered";
    until_every(&mut browser, &pages, what, SHOWS_WITHIN, &connecting).await?;
    for page in &pages {
        browser.eval_in(page, "window.releaseStreams()").await?;
    }
    let what = "is live once the new stream answered";
    until_every(
        &mut browser,
        &pages,
        what,
        SHOWS_WITHIN,
        &connection_is("live"),
    )
    .await?;
    Ok(())
}

/// Records what the page hears on the dashboard's channel (`heard`) and each snapshot time it
/// shows (`shown`, from the one shown now).
const RECORD_HEARD_AND_SHOWN: &str = r#"(() => {
    window.heard = [];
    window.recorder = new BroadcastChannel(`mesh-dashboard-${token}`);
    recorder.addEventListener('message', (event) => heard.push(event.data));
    const updated = document.getElementById('updated');
    window.shown = [updated.textContent];
    new MutationObserver(() => shown.push(updated.textContent)).observe(updated, { childList: true });
    return true;
})()"#;

/// A page that opens asks the streaming page for the current snapshot: the answer went to
/// every page, and each showed the same snapshot again. It goes to the page that asked alone.
#[tokio::test]
async fn a_new_pages_question_is_answered_to_it_alone() -> anyhow::Result<()> {
    let (_serial, _env, mesh) = serial_mesh().await;
    let dashboard = mesh.dashboard(Stdio::inherit()).await?;
    let mut browser = Browser::start(1000, 800, &shots().join("answer.log")).await?;
    let pages = pages_behind_a_streaming_one(&mut browser, &dashboard.url, 3).await?;
    for page in &pages[1..] {
        browser.eval_in(page, RECORD_HEARD_AND_SHOWN).await?;
    }
    let asking = browser.open_page(&dashboard.url).await?;
    let live = connection_is("live");
    until_in(
        &mut browser,
        Some(&asking),
        "the new page is live",
        SHOWS_WITHIN,
        &live,
    )
    .await?;
    let answered = r#"(() => { const asked = heard.find((m) => m.ask);
        return !!asked && heard.some((m) => m.state !== undefined && m.to === asked.ask); })()"#;
    let what = "hears the answer, addressed to the page that asked";
    until_every(&mut browser, &pages[1..], what, SHOWS_WITHIN, answered).await?;
    // The page's own channel, made before the recorder, is given each message first: once the
    // recorder heard the answer, the page has shown it or not.
    let not_shown_again = "shown.every((time, i) => i === 0 || time !== shown[i - 1])";
    let what = "did not show the answer, the snapshot it shows already";
    until_every(
        &mut browser,
        &pages[1..],
        what,
        Duration::ZERO,
        not_shown_again,
    )
    .await?;
    Ok(())
}

/// The text of `cluster`'s cell in the clusters table's column headed `header`, as
/// JavaScript.
fn cluster_cell(cluster: &str, header: &str) -> String {
    format!(
        r#"(() => {{ const column = [...document.querySelectorAll('#clusters th')]
            .findIndex((th) => th.textContent === '{header}');
        return document.querySelector('#clusters tr[data-cluster="{cluster}"]').children[column].textContent; }})()"#
    )
}

/// `cluster`'s last sync as the page shows it, as JavaScript: `seconds`, its age (not a
/// number while there is none), `synced`, its time in the snapshot, and `snapshot`, the
/// snapshot shown.
fn last_sync(cluster: &str) -> String {
    format!(
        r#"(() => {{ const text = {};
        const units = {{ y: 31536000, d: 86400, h: 3600, m: 60, s: 1 }};
        const seconds = /^(\d+[ydhms])+$/.test(text)
            ? [...text.matchAll(/(\d+)([ydhms])/g)].reduce((sum, [, n, unit]) => sum + n * units[unit], 0)
            : NaN;
        const synced = state.clusters.find((c) => c.name === '{cluster}').lastSyncedAtMs ?? null;
        return {{ seconds, synced, snapshot: document.getElementById('updated').textContent }}; }})()"#,
        cluster_cell(cluster, "Last sync")
    )
}

/// "Last sync" and "Token expires" were ages the server wrote into each snapshot: a quiet mesh
/// sends none, and the page said `12s` for as long as nothing changed, the webhook dead or
/// not. The page reckons them: within one snapshot the age grows, and a page opened later,
/// sent that snapshot, shows the age of now, not the snapshot's.
#[tokio::test]
async fn the_last_sync_grows_older_without_a_new_snapshot() -> anyhow::Result<()> {
    let (_serial, _env, mesh) = serial_mesh().await;
    let dashboard = mesh.dashboard(Stdio::inherit()).await?;
    let mut browser = Browser::start(1400, 1000, &shots().join("ages.log")).await?;
    browser.navigate(&dashboard.url).await?;
    let shown = last_sync("remote-1");
    until(
        &mut browser,
        "remote-1 shows when it was last synced and when its token expires",
        Duration::from_secs(60),
        &format!(
            r"!Number.isNaN({shown}.seconds)
                && /^(in \S+|expired \S+ ago|never|unknown)$/.test({})",
            cluster_cell("remote-1", "Token expires")
        ),
    )
    .await?;
    // Compared with the age first seen in the same snapshot: a new snapshot starts again.
    let grew = format!(
        "(() => {{ const now = {shown}; const first = window.firstShown;
            if (!first || first.snapshot !== now.snapshot) {{ window.firstShown = now; return false; }}
            return now.seconds >= first.seconds + {GROWN_BY}; }})()"
    );
    until(
        &mut browser,
        &format!("remote-1's last sync grows {GROWN_BY}s older within one snapshot"),
        AGES_GROW_WITHIN,
        &grew,
    )
    .await?;

    let seen = browser.eval(&shown).await?;
    // Reloaded, the page streams anew and is sent that snapshot, made seconds ago: the first
    // age it shows is that of now, not the snapshot's.
    browser.eval("location.reload(); true").await?;
    let first_shown = format!(
        "(() => {{ const now = {shown}; if (window.firstShown || Number.isNaN(now.seconds)) return false;
            window.reloadedShown ??= now; return true; }})()"
    );
    let what = "the page reloaded shows remote-1's last sync";
    until_shown(&mut browser, what, &first_shown).await?;
    let reloaded = browser.eval("window.reloadedShown").await?;
    anyhow::ensure!(
        reloaded["synced"] != seen["synced"]
            || reloaded["seconds"].as_i64() >= seen["seconds"].as_i64(),
        "the page reloaded shows a last sync younger than before: {reloaded} after {seen}"
    );
    Ok(())
}
