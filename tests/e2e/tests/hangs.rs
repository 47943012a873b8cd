//! Hangs: a process that accepts connections and then never answers (frozen with SIGSTOP, as
//! a hung or partitioned process looks from outside) never blocks an edit of the primary. A
//! hung remote holds it no longer than the push deadline, a hung webhook no longer than the
//! webhook timeout, and the remotes converge once it answers again, without the periodic
//! resync. A remote that answers a few bytes at a time holds no call past its deadline, and a
//! remote whose syncs fail that slowly never delays the others' syncs.
//!
//! Every test has a mesh of its own: a frozen process would stall the tests sharing it.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use mesh_core::cluster::CONDITION_REACHABLE;
use mesh_e2e::{
    NO_RESYNC, carries, cluster_condition, create_everywhere, create_namespace, describe,
    eventually, fixtures, installed_webhook, label_on_primary, labels, managed_labels,
    one_remote_mesh_with, own_mesh_with, unique_name,
};
use mesh_testenv::mesh::MeshOptions;
use mesh_testenv::proxy::Proxy;
use mesh_testenv::{Cluster, TestEnv};

/// The webhook's push deadline in these meshes (its default, set explicitly).
const PUSH_DEADLINE: Duration = Duration::from_secs(2);
/// What kubectl may spend besides the time admission is held: starting, a GET, the PATCH
/// through the webhook's answer and the annotation it adds. About 100 ms on an idle machine;
/// 1.5 s leaves room for a loaded one and stays below the gaps the timing assertions must
/// see: a webhook that waited for a hung remote would hold the edit for the whole webhook
/// timeout (5 s), 3 s past the push deadline; an apiserver that called a hung webhook twice
/// would hold it for two timeouts.
const MARGIN: Duration = Duration::from_millis(1500);
/// Time a remote that answers again gets to converge.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);

/// A mesh whose periodic resync never comes within a test, with [`PUSH_DEADLINE`] and
/// `more_webhook_args`.
fn options(more_webhook_args: &[&str]) -> anyhow::Result<MeshOptions> {
    let mut options = MeshOptions::from_workspace()?;
    options.resync_period = NO_RESYNC;
    options.webhook_args = [
        "--push-deadline",
        &format!("{}ms", PUSH_DEADLINE.as_millis()),
    ]
    .iter()
    .chain(more_webhook_args)
    .map(|arg| arg.to_string())
    .collect();
    Ok(options)
}

/// Sends SIGCONT to a process when dropped, so that a failed assertion never leaves it
/// frozen. Resuming a running process again is harmless.
struct ResumeOnDrop<'a> {
    env: &'a TestEnv,
    process: String,
}

impl Drop for ResumeOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.env.resume_process(&self.process);
    }
}

/// The webhook's timeout in the installed webhook configuration, after checking that its
/// failure policy lets the edit through when the webhook does not answer.
async fn installed_webhook_timeout(env: &TestEnv) -> anyhow::Result<Duration> {
    let (_, webhook) = installed_webhook(env).await?;
    assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
    let seconds = webhook
        .timeout_seconds
        .ok_or_else(|| anyhow::anyhow!("the webhook configuration sets no timeout"))?;
    Ok(Duration::from_secs(u64::try_from(seconds)?))
}

#[tokio::test]
async fn a_hung_remote_holds_a_primary_edit_no_longer_than_the_push_deadline() -> anyhow::Result<()>
{
    // Calls to a remote time out after 2 s by default, like the push deadline: with a longer
    // timeout only the push deadline can end the wait.
    let (env, _mesh) = own_mesh_with(2, options(&["--remote-timeout", "30s"])?).await?;
    let webhook_timeout = installed_webhook_timeout(&env).await?;
    assert!(PUSH_DEADLINE + MARGIN < webhook_timeout);
    let ns = create_everywhere(&env, "hung-remote").await?;
    let (hung, answering) = (&env.remotes()[0], &env.remotes()[1]);
    let enabled = labels(&[("istio-injection", "enabled")]);

    env.pause_apiserver(&hung.name)?;
    let resume = ResumeOnDrop {
        env: &env,
        process: hung.apiserver_name(),
    };
    let started = Instant::now();
    let warnings = label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let elapsed = started.elapsed();
    eprintln!("kubectl label returned in {elapsed:.2?}");
    assert!(
        elapsed < PUSH_DEADLINE + MARGIN,
        "kubectl took {elapsed:?} with {} hung (push deadline {PUSH_DEADLINE:?}, webhook \
         timeout {webhook_timeout:?}); it printed: {warnings}",
        hung.name
    );
    assert!(
        warnings.contains(&format!(
            "kubectl-mesh: {} did not answer in time; the reconciler will retry",
            hung.name
        )),
        "kubectl printed: {warnings}"
    );
    assert!(
        warnings.contains(&format!(
            "kubectl-mesh: istio-injection=enabled applied on {}",
            answering.name
        )),
        "kubectl printed: {warnings}"
    );
    // No waiting: the answering remote got the push before the apiserver answered kubectl.
    assert_eq!(
        managed_labels(answering, &ns).await?.as_ref(),
        Some(&enabled)
    );
    assert_eq!(
        managed_labels(env.primary(), &ns).await?.as_ref(),
        Some(&enabled)
    );

    // The next edit does not wait for the remote that just let a push run out its deadline.
    let started = Instant::now();
    let warnings = label_on_primary(&env, &ns, &["istio-injection=disabled"]).await?;
    let elapsed = started.elapsed();
    assert!(
        warnings.contains(&format!(
            "kubectl-mesh: {} did not answer the last push, not waited for; the reconciler will retry",
            hung.name
        )),
        "kubectl printed: {warnings}"
    );
    assert!(
        elapsed < PUSH_DEADLINE,
        "the second edit took {elapsed:?} with {} hung: it waited for it again",
        hung.name
    );
    let disabled = labels(&[("istio-injection", "disabled")]);

    // The periodic resync is an hour away: the reconciler's sync that the edit started, or
    // its retry with backoff, converges the remote once it answers.
    env.resume_apiserver(&hung.name).await?;
    drop(resume);
    eventually(
        &format!("{ns} on {} converged after it answered again", hung.name),
        CONVERGE_DEADLINE,
        || async {
            Ok((managed_labels(hung, &ns).await?.as_ref() == Some(&disabled)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_hung_webhook_holds_a_primary_edit_no_longer_than_its_timeout() -> anyhow::Result<()> {
    let (env, mesh, remote, ns) = one_remote_mesh_with(options(&[])?, "hung-webhook").await?;
    let webhook_timeout = installed_webhook_timeout(&env).await?;
    let enabled = labels(&[("istio-injection", "enabled")]);

    mesh.pause_webhook(&env)?;
    let resume = ResumeOnDrop {
        env: &env,
        process: mesh_testenv::mesh::WEBHOOK_PROCESS.to_owned(),
    };
    let started = Instant::now();
    // failurePolicy Ignore: the apiserver gives up on the webhook and stores the edit.
    let warnings = label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let elapsed = started.elapsed();
    eprintln!("kubectl label returned in {elapsed:.2?}");
    assert!(
        !warnings.contains("kubectl-mesh:"),
        "the frozen webhook answered; kubectl printed: {warnings}"
    );
    // Not shorter: the apiserver did call the webhook and waited for it.
    assert!(
        elapsed >= webhook_timeout && elapsed < webhook_timeout + MARGIN,
        "kubectl took {elapsed:?} with the webhook hung (webhook timeout {webhook_timeout:?})"
    );
    assert_eq!(
        managed_labels(env.primary(), &ns).await?.as_ref(),
        Some(&enabled)
    );
    // Nothing else pushes: the remote keeps the old value while the webhook is frozen, also
    // after a push that could have been under way had time to land.
    let watched_until = Instant::now() + PUSH_DEADLINE;
    while Instant::now() < watched_until {
        assert_eq!(managed_labels(&remote, &ns).await?, Some(labels(&[])));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The periodic resync is an hour away: the reconciler's watch of the primary, which
    // resumes with the process, tells it about the edit.
    mesh.resume_webhook(&env)?;
    drop(resume);
    eventually(
        &format!(
            "{ns} on {} converged after the webhook resumed",
            remote.name
        ),
        CONVERGE_DEADLINE,
        || async {
            Ok((managed_labels(&remote, &ns).await?.as_ref() == Some(&enabled)).then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// A proxy in front of `remote`'s apiserver, and the remote's stored kubeconfig pointed at it:
/// the mesh reaches the remote only through the proxy from then on.
async fn through_proxy(env: &TestEnv, remote: &Cluster) -> anyhow::Result<Proxy> {
    let proxy = Proxy::start(remote).await?;
    let server = format!("https://{}", proxy.local_addr());
    fixtures::point_at(env, &remote.name, &server).await?;
    Ok(proxy)
}

/// Waits until the webhook has rebuilt its clients of the remote behind `proxy`: its watches
/// and a sync connect through it.
async fn connected_through(proxy: &Proxy) -> anyhow::Result<()> {
    eventually(
        "the webhook connects through the proxy",
        CONVERGE_DEADLINE,
        || async { Ok((proxy.connections() >= 2).then_some(())) },
    )
    .await
}

/// A namespace labelled `istio-injection=enabled` on the primary, then created on `remote`:
/// the push found nothing to label there, so only a sync of `remote` can. Waits until it
/// carries the label, for at most `within`.
async fn synced_after_its_push(
    env: &TestEnv,
    remote: &Cluster,
    prefix: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let ns = unique_name(prefix);
    create_namespace(env.primary(), &ns).await?;
    label_on_primary(env, &ns, &["istio-injection=enabled"]).await?;
    create_namespace(remote, &ns).await?;
    carries(
        remote,
        &ns,
        &labels(&[("istio-injection", "enabled")]),
        within,
    )
    .await
}

/// Webhook flags under which its calls to a remote end only by `call_deadline`: connect and
/// read timeouts a minute away.
fn ending_calls_at(call_deadline: Duration) -> Vec<String> {
    vec![
        "--remote-timeout".into(),
        "60s".into(),
        "--remote-call-deadline".into(),
        format!("{}ms", call_deadline.as_millis()),
    ]
}

/// The call deadline of the webhook's clients in [`a_remote_answering_a_few_bytes_at_a_time`].
const CALL_DEADLINE: Duration = Duration::from_secs(3);

/// A remote that answers a few bytes at a time, never slowly enough to trip a read timeout:
/// every call to it still ends by its deadline, so the reconciler's sync fails as timed out
/// and says so in the cluster's status instead of holding its worker (and a permit shared by
/// every remote's syncs) for minutes, and `kubectl mesh sync` ends by its `--remote-timeout`.
/// Once the remote answers at full speed again, it converges.
#[tokio::test]
async fn a_remote_answering_a_few_bytes_at_a_time() -> anyhow::Result<()> {
    let mut options = options(&[])?;
    options.webhook_args.extend(ending_calls_at(CALL_DEADLINE));
    let (env, _mesh, remote, ns) = one_remote_mesh_with(options, "trickled").await?;
    let proxy = through_proxy(&env, &remote).await?;
    // Only clients behind the proxy can be slowed by it.
    connected_through(&proxy).await?;
    label_on_primary(&env, &ns, &["istio-injection=enabled"]).await?;
    let enabled = labels(&[("istio-injection", "enabled")]);
    carries(&remote, &ns, &enabled, CONVERGE_DEADLINE).await?;

    // 80 bytes a second: a TLS handshake alone takes most of a minute, a namespace list more.
    proxy.trickle(8, Duration::from_millis(100));
    label_on_primary(&env, &ns, &["istio-injection=disabled"]).await?;
    let timed_out = format!("did not arrive within {CALL_DEADLINE:?}");
    let reachable = eventually(
        &format!("{} Reachable=False for its call deadline", remote.name),
        CONVERGE_DEADLINE,
        || async {
            Ok(cluster_condition(&env, &remote.name, CONDITION_REACHABLE)
                .await?
                .filter(|c| c.status == "False" && c.message.contains(&timed_out)))
        },
    )
    .await?;
    assert_eq!(reachable.reason, "TimedOut", "{reachable:?}");

    // A new connection's TLS handshake is itself slower than the plugin's timeout here, so it
    // is the connect timeout, the call deadline or the command's own bound of the read that
    // proves the remote's identity, whichever comes first; either way the command ends and
    // says it timed out.
    let mut sync = tokio::process::Command::from(fixtures::mesh_invocation(
        &env,
        &["sync", "--cluster", &remote.name, "--remote-timeout", "2s"],
    )?);
    sync.kill_on_drop(true);
    let out = tokio::time::timeout(CONVERGE_DEADLINE, sync.output())
        .await
        .context("kubectl mesh sync --remote-timeout 2s still waited for the trickling remote")??;
    let text = describe(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        [
            "did not arrive within 2s",
            "(Connect): timed out",
            "no answer within 2s"
        ]
        .iter()
        .any(|timed_out| text.contains(timed_out)),
        "{text}"
    );

    proxy.thaw();
    let disabled = labels(&[("istio-injection", "disabled")]);
    carries(&remote, &ns, &disabled, CONVERGE_DEADLINE).await?;
    Ok(())
}

/// A remote whose connections died without a word, as when a NAT or a load balancer drops
/// idle flows: the drift watch hears nothing, not even that it is dead, while new connections
/// get through. The watch is found dead within its read timeout and listed again, so a
/// namespace created on the remote after the drop still gets the primary's labels, without
/// waiting minutes for what a dead watch would never show.
#[tokio::test]
async fn a_watch_whose_connection_died_silently_is_replaced() -> anyhow::Result<()> {
    let mut options = options(&[])?;
    // Frequent resyncs: only what the reconciler believes of the remote can hold a change back.
    options.resync_period = Duration::from_secs(5);
    let (env, _mesh) = own_mesh_with(1, options).await?;
    let remote = &env.remotes()[0];
    let proxy = through_proxy(&env, remote).await?;
    connected_through(&proxy).await?;
    synced_after_its_push(&env, remote, "before-drop", CONVERGE_DEADLINE).await?;

    proxy.freeze_open_connections();
    let within = mesh_core::remote::WATCH_READ_TIMEOUT + CONVERGE_DEADLINE;
    synced_after_its_push(&env, remote, "after-drop", within).await
}

/// How long each sync of the failing remote in
/// [`a_remote_failing_slowly_never_delays_the_others`] holds its turn: its call deadline.
const SLOW_FAILURE: Duration = Duration::from_secs(30);

/// A remote whose syncs fail slowly (every call running out its deadline) retries in turns of
/// its own: with one sync at a time, a healthy remote's drift is still corrected as soon as it
/// is seen, not after the failing remote's attempt. Before, the healthy remote waited for
/// the failing one's turn, up to a whole call deadline each time.
#[tokio::test]
async fn a_remote_failing_slowly_never_delays_the_others() -> anyhow::Result<()> {
    // One sync at a time, and the failing remote retried at once: left alone, it would hold
    // the one turn nearly all the time.
    let mut options = options(&[
        "--concurrent-syncs",
        "1",
        "--backoff-initial",
        "100ms",
        "--backoff-max",
        "100ms",
    ])?;
    options.webhook_args.extend(ending_calls_at(SLOW_FAILURE));
    let (env, _mesh) = own_mesh_with(2, options).await?;
    let (slow, healthy) = (&env.remotes()[0], &env.remotes()[1]);
    let proxy = through_proxy(&env, slow).await?;
    // In sync through the proxy, its drift watch current: each retry then goes straight to
    // writing the label below, and holds its turn for the whole call deadline.
    let stuck = create_everywhere(&env, "stuck").await?;
    connected_through(&proxy).await?;
    proxy.trickle(8, Duration::from_millis(100));
    label_on_primary(&env, &stuck, &["istio-injection=enabled"]).await?;
    let failing = || async {
        Ok(cluster_condition(&env, &slow.name, CONDITION_REACHABLE)
            .await?
            .filter(|c| c.status == "False" && c.reason == "TimedOut"))
    };
    eventually(
        &format!("{} failing as timed out", slow.name),
        SLOW_FAILURE + CONVERGE_DEADLINE,
        failing,
    )
    .await?;

    // Labelled by a sync of the healthy remote once the drift settles (the push deadline and
    // a second), far sooner than a failing attempt ends. A few rounds, so that a sync that had
    // to wait for the failing remote cannot pass by luck.
    let within = PUSH_DEADLINE + Duration::from_secs(8);
    for _ in 0..4 {
        synced_after_its_push(&env, healthy, "beside-a-slow-remote", within).await?;
    }
    anyhow::ensure!(
        failing().await?.is_some(),
        "{} stopped failing during the test",
        slow.name
    );
    Ok(())
}
