//! `kubectl mesh install`: the CRD, namespace, RBAC, serving certificate, webhook and webhook
//! configuration on the primary.

mod rollout;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration, apps::v1::Deployment, core::v1::Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client, api::DynamicObject};
use mesh_core::{MESH_NAMESPACE, labels::SyncRule, printable::one_line};

use super::apply::{self, Deleted};
use super::check::caller_auth;
use super::install_check;
use crate::{
    Context, Error, Result,
    access::Target,
    installed_rule, mesh_state,
    output::{self, OutputFormat},
    remote_setup as setup,
    render::{self, Manifest, Options, PreviousCas, ServingCert, WebhookUrl},
};

/// Install (or upgrade) kubectl-mesh on the primary cluster.
///
/// Safe to re-run: objects are server-side applied, and the existing serving certificate is
/// kept unless --rotate-certs is given or it no longer fits. Refused on a cluster attached as
/// a primary's remote (install on that primary, or detach the cluster first).
///
/// Authenticating the apiserver (recommended): without it, anything that reaches the webhook
/// can post a hand-made AdmissionReview and make it write namespaces on every remote. Give the
/// primary's kube-apiserver a client certificate for webhook calls (an AdmissionConfiguration
/// passed with --admission-control-config-file, whose MutatingAdmissionWebhook plugin names a
/// kubeconfig with a user `mesh-webhook.kubectl-mesh.svc` holding the certificate and key),
/// then run `kubectl mesh install --client-ca-file <CA of that certificate>`, a CA that signs
/// nothing else (every certificate it signs may call the webhook) or, with
/// --client-allowed-names, nothing else under those names. `kubectl mesh check` says whether
/// callers are authenticated.
#[derive(Debug, clap::Args)]
pub struct Install {
    // Image of the webhook. Not clap's `env`: clap counts a value from the environment as
    // given, so a shell exporting KUBECTL_MESH_IMAGE would conflict with every --webhook-url;
    // the environment is a default (see `image`), and the help says so as clap would.
    #[arg(
        long,
        value_name = "IMAGE",
        conflicts_with = "webhook_url",
        help = format!(
            "Image of the webhook [env: {IMAGE_ENV}] [default: {}]",
            render::DEFAULT_IMAGE
        )
    )]
    pub image: Option<String>,
    /// Replicas of the webhook Deployment.
    #[arg(long, default_value_t = render::DEFAULT_REPLICAS, value_parser = clap::value_parser!(i32).range(1..), conflicts_with = "webhook_url")]
    pub replicas: i32,
    /// Call the webhook at this https URL instead of running it in the cluster (no Deployment
    /// or Service is installed); its host is added to the serving certificate.
    #[arg(
        long,
        env = "KUBECTL_MESH_WEBHOOK_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub webhook_url: Option<String>,
    /// Also write tls.crt, tls.key and ca.crt to DIR, for a webhook run outside the cluster.
    #[arg(long, value_name = "DIR")]
    pub webhook_cert_dir: Option<PathBuf>,
    /// Label keys the webhook keeps equal between the primary and every remote
    /// (comma-separated). Recorded on the webhook configuration, where status, sync, check and
    /// detach read them.
    #[arg(long, value_delimiter = ',', value_name = "KEYS", default_value = installed_rule::DEFAULT_MANAGED_LABELS_LIST.as_str())]
    pub managed_labels: Vec<String>,
    /// Namespaces never synced (comma-separated, replacing the defaults); the mesh's own
    /// namespace is always added.
    #[arg(long, value_delimiter = ',', value_name = "NAMES", default_value = installed_rule::DEFAULT_EXCLUDED_NAMESPACES_LIST.as_str())]
    pub excluded_namespaces: Vec<String>,
    /// PEM CA certificate that signed the client certificate the apiserver presents to
    /// webhooks: the webhook then refuses every caller without one (stored in ConfigMap
    /// kubectl-mesh/mesh-webhook-client-ca). Without it, any TLS client may call the webhook.
    #[arg(long, value_name = "PEM")]
    pub client_ca_file: Option<PathBuf>,
    /// Subject common names the apiserver's client certificate may carry (comma-separated):
    /// the webhook refuses a certificate of that CA issued to any other name. Needs
    /// --client-ca-file.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAMES",
        requires = "client_ca_file"
    )]
    pub client_allowed_names: Vec<String>,
    /// Issue a new CA and serving certificate even if the installed ones are still good. The
    /// webhook configuration trusts the previous CA too, until --wait has seen the webhook roll
    /// out or a later install keeps the certificate.
    #[arg(long)]
    pub rotate_certs: bool,
    /// Print what would be applied and change nothing (no cluster is contacted).
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until the webhook Deployment has rolled out: every replica updated and available,
    /// no old one left (fails at once when its progress deadline is exceeded). Then the
    /// previous CA of a replaced certificate is no longer trusted.
    #[arg(long, conflicts_with = "webhook_url")]
    pub wait: bool,
    /// How long to wait for the CRD to be established and, with --wait, for the webhook.
    #[arg(long, default_value = "2m", value_parser = crate::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

impl Install {
    /// Runs the command.
    pub async fn run(self, ctx: &Context) -> Result<()> {
        let Self {
            image,
            replicas,
            webhook_url,
            webhook_cert_dir,
            managed_labels,
            excluded_namespaces,
            client_ca_file,
            client_allowed_names,
            rotate_certs,
            dry_run,
            wait,
            timeout,
        } = self;
        let progress = ctx.progress;
        let options = Options {
            deployment: render::DeploymentOptions {
                image: self::image(image, std::env::var(IMAGE_ENV).ok()),
                replicas,
            },
            webhook_url: webhook_url.as_deref().map(WebhookUrl::parse).transpose()?,
            managed_labels: installed_rule::managed_labels(&managed_labels)?,
            excluded_namespaces: installed_rule::excluded_namespaces(&excluded_namespaces)?,
            client_auth: client_ca_file
                .as_deref()
                .map(|path| client_auth(path, &client_allowed_names))
                .transpose()?,
        };
        let sans = render::serving_sans(options.webhook_url.as_ref());
        // No Deployment carries the rule to a webhook run elsewhere: whoever starts it must
        // pass it, or it disagrees with the matchConditions and the commands.
        let webhook_flags =
            installed_rule::webhook_flags(&options.managed_labels, &options.excluded_namespaces);
        if options.webhook_url.is_some() && !webhook_flags.is_empty() {
            progress.info(format!("start mesh-webhook with {webhook_flags}"));
        }
        // Whether callers are authenticated at all is `check`'s to report, not every install's.
        if let (Some(path), Some(auth), Some(_)) =
            (&client_ca_file, &options.client_auth, &options.webhook_url)
        {
            progress.info(format!(
                "start mesh-webhook with {}",
                render::client_auth_command_line(&path.to_string_lossy(), auth)
            ));
        }

        if dry_run {
            // A fresh certificate stands in for whatever the cluster holds: a dry run never
            // contacts the cluster, so its output can be reviewed or piped into GitOps.
            let cert = render::generate_serving_cert(&sans)?;
            let manifests = render::render(&options, &cert)?;
            if webhook_cert_dir.is_some() {
                progress.warn("--webhook-cert-dir is ignored with --dry-run");
            }
            return output::print_stdout(&dry_run_output(ctx.output, &manifests)?);
        }

        let (_, target, client) = ctx.primary_client().await?;
        // The rights of the reads below and of the wait for the CRD, before any of them.
        install_check::check_reads(&client, &target).await?;
        refuse_attached_remote(&client, &target).await?;
        let installed = installed_configuration(&client).await?;
        warn_rule_change(installed.as_ref(), &options, ctx);
        if let Some(change) = webhook_url_change(installed.as_ref(), &options) {
            progress.warn(change);
        }
        if options.webhook_url.is_none() {
            let deployment = installed_deployment(&client).await?;
            for change in deployment_changes(deployment.as_ref(), &options) {
                progress.warn(change);
            }
        }
        let (cert, issued) = serving_cert(&client, &sans, rotate_certs, ctx).await?;
        if issued && options.webhook_url.is_some() && webhook_cert_dir.is_none() {
            progress.warn(
                "a webhook running outside the cluster needs the new certificate: \
                 re-run with --webhook-cert-dir DIR and point the webhook at DIR",
            );
        }
        // Only in the cluster can install tell when every webhook serves the new certificate.
        let waits_for_rollout = wait && options.webhook_url.is_none();
        let switching = switching(issued, &options, webhook_cert_dir.as_deref(), &cert);
        let trusted = trusted_ca_bundle(installed.as_ref());
        // A re-run soon after a rotation: replicas not rolled yet still serve the previous
        // certificate, and their calls would fail open once its CA went.
        let previous_served = !switching
            && !waits_for_rollout
            && options.webhook_url.is_none()
            && render::others_than(&trusted, &cert.ca_pem).is_some_and(|n| n > 0)
            && rollout::pods_serving_another(&client, &cert.fingerprint()).await?;
        let plan = render::ca_bundle_plan(
            &cert.ca_pem,
            &trusted,
            switching || previous_served,
            waits_for_rollout,
            jiff::Timestamp::now(),
        );
        let manifests = render::render_with_ca_bundle(&options, &cert, &plan)?;
        // Before anything is applied: a DIR that cannot take the files refuses with nothing
        // changed, rather than once the cluster holds a CA the external webhook's files lack.
        let staged = webhook_cert_dir
            .as_deref()
            .map(|dir| StagedCertDir::write(dir, &cert))
            .transpose()?;
        // What this run deletes once everything is applied, read now: only what exists is
        // deleted, and the right to is asked before anything is written.
        let removals = removals(&client, &options).await?;
        install_check::check_removals(&client, &target, &removals).await?;
        // Nothing is written unless a dry run of each object is accepted (approach (a): a dry
        // run cannot see what it did not store, so an absent namespace, or role a binding needs,
        // is created for real first and deleted again on a refusal; see install_check).
        install_check::check(&client, &manifests).await?;
        for m in manifests {
            apply::apply(&client, &m).await?;
            progress.ok(format!("{} applied", m.describe()));
            if m.resource.kind == "CustomResourceDefinition" {
                apply::wait_crd_established(&client, &m.name, timeout).await?;
            }
        }
        if let Some(staged) = staged {
            let dir = staged.commit()?;
            progress.ok(format!(
                "wrote {}, {} and {} to {}",
                render::TLS_CRT,
                render::TLS_KEY,
                render::CA_CRT,
                dir.display()
            ));
        }

        for removal in &removals {
            remove(&client, &removal.manifest, ctx).await?;
        }
        if options.webhook_url.is_none() && wait {
            let current =
                matches!(plan.previous, PreviousCas::UntilRollout(_)).then(|| cert.fingerprint());
            rollout::wait_webhook(&client, current.as_deref(), timeout, progress).await?;
        }
        match &plan.previous {
            PreviousCas::None => {}
            // Once `wait_webhook` saw no pod serve the previous certificate.
            PreviousCas::UntilRollout(ca_bundle) => {
                let m = Manifest::new(&render::mutating_webhook_configuration(
                    &options,
                    Some(ca_bundle.as_bytes()),
                ))?;
                apply::apply(&client, &m).await?;
                progress.ok(format!(
                    "{} applied: it no longer trusts the previous CA (every replica serves the \
                     current certificate)",
                    m.describe()
                ));
            }
            PreviousCas::Left => progress.info(match options.webhook_url {
                Some(_) => {
                    "the webhook configuration trusts the previous CA too: once the webhook \
                     serves the new certificate, re-run install without --rotate-certs to drop it"
                }
                None => {
                    "the webhook configuration trusts the previous CA too: re-run install \
                     without --rotate-certs once Deployment mesh-webhook has rolled out (or with \
                     --wait) to drop it"
                }
            }),
            PreviousCas::Dropped => progress.ok(format!(
                "MutatingWebhookConfiguration {}: the previous CA is no longer trusted",
                render::WEBHOOK_CONFIGURATION
            )),
        }
        progress.info("next: `kubectl mesh attach <remote-kubeconfig>` joins a remote cluster");
        Ok(())
    }
}

/// The environment variable that names the webhook's image when `--image` is not given.
pub const IMAGE_ENV: &str = "KUBECTL_MESH_IMAGE";

/// The webhook's image: `--image` (`flag`), else [`IMAGE_ENV`] (`env`) unless empty, else
/// [`render::DEFAULT_IMAGE`].
fn image(flag: Option<String>, env: Option<String>) -> String {
    flag.or(env.filter(|image| !image.is_empty()))
        .unwrap_or_else(|| render::DEFAULT_IMAGE.to_owned())
}

/// The attach a cluster's mesh namespace records, when the cluster is a primary's remote and
/// install does not hold that namespace already.
#[derive(Debug, PartialEq, Eq)]
struct Attached {
    /// The name the primary knows the cluster by.
    cluster: String,
    /// That primary's id (UID of its kube-system), if attach recorded it.
    primary: Option<String>,
}

/// Whether install must keep off the cluster whose [`MESH_NAMESPACE`] is `namespace`: attach
/// recorded a cluster's identity on it. Install applies its Namespace with the field manager
/// attach applies it with, so it would drop those records (the cluster label and the primary
/// annotation), by which attach and detach know their namespace. A namespace without them is
/// install's or someone else's, and install leaves what attach keeps elsewhere alone (a primary
/// may also be another mesh's remote, if installed before it was attached).
fn attached_remote(namespace: &ObjectMeta) -> Option<Attached> {
    setup::owner_cluster(namespace).map(|cluster| Attached {
        cluster: cluster.to_owned(),
        primary: setup::primary_of(namespace).map(str::to_owned),
    })
}

/// Refuses, before anything is written, to install on a cluster attached as a remote
/// ([`attached_remote`]).
async fn refuse_attached_remote(client: &Client, target: &Target) -> Result<()> {
    let namespace = mesh_state::namespace(client, MESH_NAMESPACE).await?;
    match namespace.and_then(|ns| attached_remote(&ns.metadata)) {
        None => Ok(()),
        Some(found) => Err(attached_refusal(&target.server, &found)),
    }
}

/// The one line of [`refuse_attached_remote`].
fn attached_refusal(server: &str, found: &Attached) -> Error {
    let Attached { cluster, primary } = found;
    let primary = match primary {
        Some(id) => format!("primary {id} (kube-system uid)"),
        None => "a primary".to_owned(),
    };
    Error::Refused {
        what: format!(
            "the cluster at {server} is attached as remote {cluster:?} of {primary}; nothing \
             was installed"
        ),
        hint: format!(
            "install on the primary (--kubeconfig/--context of the primary), or run `kubectl \
             mesh detach {cluster}` on that primary first (if that primary is gone, `kubectl \
             delete namespace {MESH_NAMESPACE}` here)"
        ),
    }
}

/// The webhook configuration an earlier install left, if any.
async fn installed_configuration(client: &Client) -> Result<Option<MutatingWebhookConfiguration>> {
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(render::WEBHOOK_CONFIGURATION)
        .await
        .map_err(Error::kube(format!(
            "cannot read MutatingWebhookConfiguration {}",
            render::WEBHOOK_CONFIGURATION
        )))
}

/// The webhook's Deployment an earlier install left, if any; none to compare with when the
/// caller may not read it (install's own check of its rights then says what is missing).
async fn installed_deployment(client: &Client) -> Result<Option<Deployment>> {
    match Api::<Deployment>::namespaced(client.clone(), MESH_NAMESPACE)
        .get_opt(render::WEBHOOK)
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
        read => read.map_err(Error::kube(format!(
            "cannot read Deployment {MESH_NAMESPACE}/{}",
            render::WEBHOOK
        ))),
    }
}

/// The URL the webhook configuration an earlier install left (`installed`) calls the webhook
/// at, when the webhook runs outside the cluster.
fn installed_webhook_url(installed: &MutatingWebhookConfiguration) -> Option<&str> {
    render::webhook_entry(installed)?
        .client_config
        .url
        .as_deref()
}

/// What this install changes of where the webhook runs, with the flag that keeps it: a re-run
/// without `--webhook-url` moves a webhook called by URL into the cluster.
fn webhook_url_change(
    installed: Option<&MutatingWebhookConfiguration>,
    options: &Options,
) -> Option<String> {
    let url = installed.and_then(installed_webhook_url)?;
    if options.webhook_url.is_some() {
        return None;
    }
    Some(format!(
        "the webhook configuration called {} (--webhook-url); this run installs the webhook in \
         the cluster instead; to keep it, re-run with --webhook-url {}",
        one_line(url),
        one_line(&render::shell_word(url))
    ))
}

/// What this install changes of the webhook's Deployment (`installed`), each with the flag
/// that keeps it: a re-run takes the flags given and the defaults for the others, so an image,
/// a replica count or the caller names set by an earlier install would otherwise go unnoticed.
fn deployment_changes(installed: Option<&Deployment>, options: &Options) -> Vec<String> {
    let Some(installed) = installed else {
        return Vec::new();
    };
    let mut changes = Vec::new();
    if let Some(image) =
        render::installed::image(installed).filter(|&i| i != options.deployment.image)
    {
        changes.push(format!(
            "the webhook's image changes from {image} to {}; to keep it, re-run with --image {}",
            options.deployment.image,
            render::shell_word(image)
        ));
    }
    if let Some(replicas) =
        render::installed::replicas(installed).filter(|&r| r != options.deployment.replicas)
    {
        changes.push(format!(
            "the webhook's replicas change from {replicas} to {}; to keep them, re-run with \
             --replicas {replicas}",
            options.deployment.replicas
        ));
    }
    let names_kept = options
        .client_auth
        .as_ref()
        .is_some_and(|auth| !auth.allowed_names.is_empty());
    let names = caller_auth::allowed_names(installed);
    // With names, their line below says how to keep the CA too.
    if options.client_auth.is_none()
        && names.is_none()
        && caller_auth::requires_client_cert(installed)
    {
        changes.push(format!(
            "the webhook's client CA goes: any TLS client that reaches it may call it; to keep \
             it, re-run with {} <the CA file used at install>",
            render::CLIENT_CA_FLAG
        ));
    }
    if let Some(names) = names.filter(|_| !names_kept) {
        let (shown, flag) = (
            one_line(names),
            one_line(&render::shell_word(names)).into_owned(),
        );
        let allowed = render::CLIENT_ALLOWED_NAMES_FLAG;
        changes.push(match options.client_auth {
            Some(_) => format!(
                "the webhook's {allowed} {shown} goes (any certificate its client CA signed may \
                 call it); to keep it, re-run with {allowed} {flag}"
            ),
            // Removing the client CA warns too; this line says how to keep the names with it.
            None => format!(
                "the webhook's {allowed} {shown} goes with its client CA; to keep them, re-run \
                 with {} <the CA file used at install> {allowed} {flag}",
                render::CLIENT_CA_FLAG
            ),
        });
    }
    changes
}

/// Whether `--webhook-cert-dir` `dir` holds another serving certificate than `cert`, or none:
/// the webhook reading it switches once install writes it (e.g. a certificate issued by an
/// install without the flag, now kept).
fn holds_another_cert(dir: &Path, cert: &ServingCert) -> bool {
    std::fs::read_to_string(dir.join(render::TLS_CRT))
        .ok()
        .as_deref()
        != Some(&cert.cert_pem)
}

/// Whether the webhook serves another certificate than `cert` until it reads it: one `issued`
/// by this run, or, for a webhook run outside the cluster, one its `--webhook-cert-dir`
/// (`cert_dir`) does not hold yet (it reads the directory).
fn switching(issued: bool, options: &Options, cert_dir: Option<&Path>, cert: &ServingCert) -> bool {
    issued
        || (options.webhook_url.is_some()
            && cert_dir.is_some_and(|dir| holds_another_cert(dir, cert)))
}

/// The caBundle (PEM) the apiserver calls the webhook with now; empty when there is none.
fn trusted_ca_bundle(installed: Option<&MutatingWebhookConfiguration>) -> String {
    let hook = installed.and_then(render::webhook_entry);
    hook.and_then(|h| h.client_config.ca_bundle.as_ref())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

/// Warns when this install changes the sync rule of an earlier one (`installed`): a re-run
/// without the rule flags resets a custom rule to the default, which should not go unnoticed.
fn warn_rule_change(
    installed: Option<&MutatingWebhookConfiguration>,
    options: &Options,
    ctx: &Context,
) {
    let previous =
        installed.map(|c| installed_rule::from_annotations(c.metadata.annotations.as_ref()));
    let new = SyncRule::new(
        options.managed_labels.iter().cloned(),
        options.excluded_namespaces.iter().cloned(),
    );
    let Some(previous) = previous.filter(|p| *p != new) else {
        return;
    };
    let was = installed_rule::describe(&previous);
    if options.webhook_url.is_some() && new == SyncRule::default() {
        ctx.progress.warn(format!(
            "the sync rule changes from {was} to the default: restart mesh-webhook without {} \
             and {}",
            installed_rule::MANAGED_LABELS_FLAG,
            installed_rule::EXCLUDED_NAMESPACES_FLAG
        ));
    } else {
        ctx.progress.warn(format!(
            "the sync rule changes from {was} to {}",
            installed_rule::describe(&new)
        ));
    }
    // The remotes' guard and sync scope were written for the rule of their attach.
    ctx.progress.info(
        "re-run `kubectl mesh attach` for every attached cluster: its remote guard and sync \
         scope follow the rule attach reads",
    );
}

/// What `--dry-run` prints: the objects as YAML or JSON, or a table of what they are.
fn dry_run_output(format: OutputFormat, manifests: &[Manifest]) -> Result<String> {
    if format.is_table() {
        let rows = manifests.iter().map(|m| {
            vec![
                m.resource.kind.clone(),
                m.namespace.clone().unwrap_or_default(),
                m.name.clone(),
            ]
        });
        return Ok(output::table(&["kind", "namespace", "name"], rows));
    }
    let values: Vec<_> = manifests.iter().map(|m| m.object.clone()).collect();
    output::render_values(format, &values)
}

/// The installed serving certificate when it can be reused, a new one otherwise (and then
/// `true`). Reusing it keeps the caBundle stable, so webhook pods and a local webhook keep
/// working.
async fn serving_cert(
    client: &Client,
    sans: &[String],
    rotate: bool,
    ctx: &Context,
) -> Result<(ServingCert, bool)> {
    let progress = ctx.progress;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), MESH_NAMESPACE);
    let existing = secrets
        .get_opt(render::TLS_SECRET)
        .await
        .map_err(Error::kube(format!(
            "cannot read Secret {MESH_NAMESPACE}/{}",
            render::TLS_SECRET
        )))?;
    let reason = match existing.as_ref().map(ServingCert::from_secret) {
        None => None,
        Some(None) => Some("the installed one is incomplete".to_owned()),
        Some(Some(cert)) if !rotate => match cert.reuse_problem(sans, jiff::Timestamp::now()) {
            None => {
                progress.info("keeping the installed serving certificate and CA");
                return Ok((cert, false));
            }
            Some(problem) => Some(format!("the installed one cannot be kept: {problem}")),
        },
        Some(Some(_)) => Some("--rotate-certs".to_owned()),
    };
    let cert = render::generate_serving_cert(sans)?;
    match reason {
        Some(why) => progress.warn(format!("issuing a new serving certificate and CA ({why})")),
        None => progress.info("issuing a serving certificate and CA"),
    }
    Ok((cert, true))
}

/// What an install with `options` deletes of what an earlier one installed: without
/// `--client-ca-file`, the client CA (so that nothing records a check that no longer runs); in
/// URL mode, the in-cluster webhook (it would run a second reconciler). In that order.
fn removed_by(options: &Options) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    if options.client_auth.is_none() {
        out.push(Manifest::new(&render::client_ca_config_map(""))?);
    }
    if options.webhook_url.is_some() {
        out.extend([
            Manifest::new(&render::service())?,
            Manifest::new(&render::deployment(&Options::default()))?,
            Manifest::new(&render::pod_disruption_budget())?,
            Manifest::new(&render::network_policy())?,
        ]);
    }
    Ok(out)
}

/// The objects of [`removed_by`] that exist, or that the caller may not read (which may).
async fn removals(client: &Client, options: &Options) -> Result<Vec<install_check::Removal>> {
    let mut found = Vec::new();
    for manifest in removed_by(options)? {
        let api: Api<DynamicObject> = match &manifest.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &manifest.resource),
            None => Api::all_with(client.clone(), &manifest.resource),
        };
        let read = match api.get_metadata_opt(&manifest.name).await {
            Ok(None) => continue,
            Ok(Some(_)) => true,
            Err(kube::Error::Api(s)) if s.code == 403 => false,
            Err(e) => {
                let doing = format!("cannot read {}", manifest.describe());
                return Err(Error::kube(doing)(e));
            }
        };
        found.push(install_check::Removal { manifest, read });
    }
    Ok(found)
}

/// Deletes `m`, one of [`removed_by`], saying why.
async fn remove(client: &Client, m: &Manifest, ctx: &Context) -> Result<()> {
    if apply::delete(client, m).await? == Deleted::NotFound {
        return Ok(());
    }
    if m.resource.kind == "ConfigMap" {
        ctx.progress.warn(format!(
            "{} deleted: the webhook no longer authenticates its callers",
            m.describe()
        ));
    } else {
        ctx.progress.ok(format!(
            "{} deleted (the webhook runs outside the cluster)",
            m.describe()
        ));
    }
    Ok(())
}

/// `--client-ca-file` read, with the names of `--client-allowed-names` (none empty).
fn client_auth(ca_file: &Path, allowed_names: &[String]) -> Result<render::ClientAuth> {
    let allowed_names: Vec<String> = allowed_names.iter().map(|n| n.trim().to_owned()).collect();
    if allowed_names.iter().any(String::is_empty) {
        return Err(Error::Refused {
            what: "--client-allowed-names holds an empty name".into(),
            hint: "pass the subject common names of the apiserver's client certificate, \
                   comma-separated"
                .into(),
        });
    }
    Ok(render::ClientAuth {
        ca_pem: read_client_ca(ca_file)?,
        allowed_names,
    })
}

/// Reads `--client-ca-file`: at least one valid PEM certificate.
fn read_client_ca(path: &Path) -> Result<String> {
    let refused = |why: String| Error::Refused {
        what: format!("--client-ca-file {}: {why}", path.display()),
        hint: "pass the PEM CA certificate that signed the client certificate the apiserver \
               presents to webhooks"
            .into(),
    };
    let pem = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("cannot read --client-ca-file {}", path.display()),
        source,
    })?;
    crate::credentials::certificates(pem.as_bytes()).map_err(refused)?;
    Ok(pem)
}

/// The certificate, key and CA for a webhook run outside the cluster, written to temporary
/// names in `--webhook-cert-dir` and moved into place by [`StagedCertDir::commit`]; dropped
/// before that, the temporary files are removed.
#[derive(Debug)]
struct StagedCertDir {
    dir: PathBuf,
    /// Temporary file and the name it is moved to, for those not moved yet.
    files: Vec<(PathBuf, PathBuf)>,
}

impl StagedCertDir {
    /// Creates `dir` if missing and writes `cert` there under temporary names; the key is
    /// readable by its owner only. Refused in one line, nothing having been installed, when
    /// `dir` cannot take the files.
    fn write(dir: &Path, cert: &ServingCert) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        let refused = |action: String, source: std::io::Error| Error::Refused {
            what: format!(
                "--webhook-cert-dir {}: {action}: {source}; nothing was installed",
                dir.display()
            ),
            hint: "pass a directory you can write (it is created if missing)".into(),
        };
        std::fs::create_dir_all(dir).map_err(|e| refused("cannot create it".into(), e))?;
        let mut staged = Self {
            dir: dir.to_owned(),
            files: Vec::new(),
        };
        for (name, text, mode) in [
            (render::TLS_CRT, &cert.cert_pem, 0o644),
            (render::TLS_KEY, &cert.key_pem, 0o600),
            (render::CA_CRT, &cert.ca_pem, 0o644),
        ] {
            let path = dir.join(name);
            // The rename of commit cannot replace a directory: refused now, not once applied.
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                let source = std::io::Error::from(std::io::ErrorKind::IsADirectory);
                return Err(refused(format!("cannot write {name}"), source));
            }
            // Written as a sibling and renamed, so a webhook watching the directory never reads
            // half a file, and a key file that already exists with looser rights is replaced,
            // not reused. The sibling is made anew (a leftover removed first, never followed if
            // a link): the mode applies only to a file this call creates.
            let tmp = dir.join(format!(".{name}.tmp"));
            remove_if_there(&tmp)
                .and_then(|()| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(&tmp)
                })
                .and_then(|mut f| {
                    staged.files.push((tmp.clone(), path));
                    f.write_all(text.as_bytes()).and_then(|()| f.sync_all())
                })
                .map_err(|e| refused(format!("cannot write {name}"), e))?;
        }
        Ok(staged)
    }

    /// Moves the files into place; the directory they are in.
    fn commit(mut self) -> Result<PathBuf> {
        while let Some((tmp, path)) = self.files.first() {
            std::fs::rename(tmp, path).map_err(|source| Error::Io {
                what: format!("installed, but cannot write {}", path.display()),
                source,
            })?;
            self.files.remove(0);
        }
        Ok(self.dir.clone())
    }
}

impl Drop for StagedCertDir {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Removes `path` (a link itself, not what it points to) if it is there.
fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser as _;
    use std::os::unix::fs::PermissionsExt;

    /// The options of an install run with `--image registry.example.com/mesh-webhook:pinned
    /// --replicas 3`, which a re-run without those flags would change.
    pub(crate) fn pinned_options() -> render::Options {
        render::Options {
            deployment: render::DeploymentOptions {
                image: "registry.example.com/mesh-webhook:pinned".into(),
                replicas: 3,
            },
            ..render::Options::default()
        }
    }

    /// A re-run without --image and --replicas says what it changes of an earlier install's,
    /// and how to keep it; the same settings change nothing.
    #[test]
    fn a_re_run_says_what_it_changes_of_the_deployment() {
        let earlier = pinned_options();
        let installed = render::deployment(&earlier);
        assert!(deployment_changes(Some(&installed), &earlier).is_empty());
        assert!(deployment_changes(None, &render::Options::default()).is_empty());
        assert_eq!(
            deployment_changes(Some(&installed), &render::Options::default()),
            [
                format!(
                    "the webhook's image changes from registry.example.com/mesh-webhook:pinned \
                     to {}; to keep it, re-run with --image \
                     registry.example.com/mesh-webhook:pinned",
                    render::DEFAULT_IMAGE
                ),
                format!(
                    "the webhook's replicas change from 3 to {}; to keep them, re-run with \
                     --replicas 3",
                    render::DEFAULT_REPLICAS
                ),
            ]
        );
    }

    /// The options of an install run with `--client-ca-file` (a stand-in CA) and
    /// `--client-allowed-names` `names`.
    fn client_auth_options(names: &[&str]) -> render::Options {
        render::Options {
            client_auth: Some(render::ClientAuth {
                ca_pem: "PEM".into(),
                allowed_names: names.iter().map(|n| n.to_string()).collect(),
            }),
            ..render::Options::default()
        }
    }

    /// A re-run that drops `--client-allowed-names` lets any certificate of the client CA call
    /// the webhook: it says so, and how to keep the names (with the CA too when that goes).
    #[test]
    fn a_re_run_says_when_the_allowed_caller_names_go() {
        let named = client_auth_options(&["kube-apiserver", "front-proxy"]);
        let installed = render::deployment(&named);
        assert!(deployment_changes(Some(&installed), &named).is_empty());
        // Other names are what the re-run was asked for.
        let renamed = client_auth_options(&["kube-apiserver"]);
        assert!(deployment_changes(Some(&installed), &renamed).is_empty());
        assert_eq!(
            deployment_changes(Some(&installed), &client_auth_options(&[])),
            [
                "the webhook's --client-allowed-names kube-apiserver,front-proxy goes (any \
                 certificate its client CA signed may call it); to keep it, re-run with \
                 --client-allowed-names kube-apiserver,front-proxy"
            ]
        );
        assert_eq!(
            deployment_changes(Some(&installed), &render::Options::default()),
            [
                "the webhook's --client-allowed-names kube-apiserver,front-proxy goes with its \
                 client CA; to keep them, re-run with --client-ca-file <the CA file used at \
                 install> --client-allowed-names kube-apiserver,front-proxy"
            ]
        );
        // Installed without names: nothing of them to lose.
        let unnamed = render::deployment(&client_auth_options(&[]));
        assert!(deployment_changes(Some(&unnamed), &client_auth_options(&[])).is_empty());
    }

    /// A re-run without `--client-ca-file` (an upgrade's `install --image`) lets any TLS
    /// client call the webhook: it says so before anything is applied, and how to keep the CA.
    #[test]
    fn a_re_run_says_when_the_client_ca_goes() {
        let installed = render::deployment(&client_auth_options(&[]));
        assert_eq!(
            deployment_changes(Some(&installed), &render::Options::default()),
            [
                "the webhook's client CA goes: any TLS client that reaches it may call it; to \
                 keep it, re-run with --client-ca-file <the CA file used at install>"
            ]
        );
        let open = render::deployment(&render::Options::default());
        assert!(deployment_changes(Some(&open), &render::Options::default()).is_empty());
    }

    /// A re-run without `--webhook-url` moves a webhook called by URL into the cluster: it says
    /// so, and how to keep the URL; a re-run with a URL, or over an in-cluster webhook, does not.
    #[test]
    fn a_re_run_says_when_the_webhook_moves_into_the_cluster() {
        let url = "https://10.0.0.5:8443/mutate";
        let by_url = render::Options {
            webhook_url: Some(WebhookUrl::parse(url).unwrap()),
            ..render::Options::default()
        };
        let installed = render::mutating_webhook_configuration(&by_url, None);
        assert_eq!(
            webhook_url_change(Some(&installed), &render::Options::default()).as_deref(),
            Some(
                "the webhook configuration called https://10.0.0.5:8443/mutate (--webhook-url); \
                 this run installs the webhook in the cluster instead; to keep it, re-run with \
                 --webhook-url https://10.0.0.5:8443/mutate"
            )
        );
        assert_eq!(webhook_url_change(Some(&installed), &by_url), None);
        let other_url = render::Options {
            webhook_url: Some(WebhookUrl::parse("https://10.0.0.6/mutate").unwrap()),
            ..render::Options::default()
        };
        assert_eq!(webhook_url_change(Some(&installed), &other_url), None);
        let in_cluster = render::mutating_webhook_configuration(&render::Options::default(), None);
        assert_eq!(
            webhook_url_change(Some(&in_cluster), &render::Options::default()),
            None
        );
        assert_eq!(webhook_url_change(None, &render::Options::default()), None);
    }

    /// A run deletes the client CA without `--client-ca-file`, and the in-cluster webhook with
    /// `--webhook-url` (each only when found, see `removals`).
    #[test]
    fn what_a_run_no_longer_installs_is_removed() {
        let removed = |options: &Options| {
            removed_by(options)
                .unwrap()
                .iter()
                .map(Manifest::describe)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            removed(&Options::default()),
            ["ConfigMap mesh-webhook-client-ca"]
        );
        assert!(removed(&client_auth_options(&[])).is_empty());
        let by_url = Options {
            webhook_url: Some(WebhookUrl::parse("https://10.0.0.5:8443/mutate").unwrap()),
            ..client_auth_options(&[])
        };
        assert_eq!(
            removed(&by_url),
            [
                "Service mesh-webhook",
                "Deployment mesh-webhook",
                "PodDisruptionBudget mesh-webhook",
                "NetworkPolicy mesh-webhook",
            ]
        );
    }

    /// A fresh serving certificate for the in-cluster webhook, unlike any other.
    fn any_cert() -> ServingCert {
        render::generate_serving_cert(&render::serving_sans(None)).unwrap()
    }

    /// What install does with `--webhook-cert-dir` once everything is applied.
    fn write_cert_dir(dir: &Path, cert: &ServingCert) {
        StagedCertDir::write(dir, cert).unwrap().commit().unwrap();
    }

    /// A kept certificate that the directory lacks is one its webhook switches to.
    #[test]
    fn a_cert_dir_switches_when_it_held_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (any_cert(), any_cert());
        assert!(holds_another_cert(dir.path(), &new));
        write_cert_dir(dir.path(), &old);
        assert!(holds_another_cert(dir.path(), &new));
        write_cert_dir(dir.path(), &new);
        assert!(!holds_another_cert(dir.path(), &new));
    }

    /// A webhook in the cluster serves the Secret's certificate, whatever `--webhook-cert-dir`
    /// held: a directory of another certificate (or none) kept the previous CA trusted.
    #[test]
    fn only_a_webhook_outside_the_cluster_switches_to_its_cert_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (old, kept) = (any_cert(), any_cert());
        let by_url = Options {
            webhook_url: Some(WebhookUrl::parse("https://10.0.0.5:8443/mutate").unwrap()),
            ..Options::default()
        };
        let in_cluster = Options::default();
        for held in [None, Some(&old)] {
            if let Some(cert) = held {
                write_cert_dir(dir.path(), cert);
            }
            assert!(switching(false, &by_url, Some(dir.path()), &kept));
            assert!(!switching(false, &in_cluster, Some(dir.path()), &kept));
        }
        write_cert_dir(dir.path(), &kept);
        assert!(!switching(false, &by_url, Some(dir.path()), &kept));
        for options in [&by_url, &in_cluster] {
            assert!(!switching(false, options, None, &kept));
            assert!(switching(true, options, Some(dir.path()), &kept));
            assert!(switching(true, options, None, &kept));
        }
    }

    #[test]
    fn cert_dir_files_and_modes() {
        let dir = std::env::temp_dir().join(format!("kubectl-mesh-certdir-{}", std::process::id()));
        let cert = any_cert();
        write_cert_dir(&dir, &cert);
        // Twice: a re-run replaces the files.
        write_cert_dir(&dir, &cert);
        // A leftover sibling readable by all, and one that links elsewhere: neither is used.
        let tmp = dir.join(format!(".{}.tmp", render::TLS_KEY));
        std::fs::write(&tmp, "old").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_cert_dir(&dir, &cert);
        let elsewhere = dir.join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
        write_cert_dir(&dir, &cert);
        assert!(!elsewhere.exists(), "the key was written through a link");
        let key = dir.join(render::TLS_KEY);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), cert.key_pem);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(render::CA_CRT)).unwrap(),
            cert.ca_pem
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The files are in place only once committed; a DIR that cannot take them is refused in
    /// one line before anything is applied, and what was staged goes when install fails.
    #[test]
    fn cert_dir_is_written_before_and_moved_in_after_the_applies() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("certs");
        let names = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let old = any_cert();
        write_cert_dir(&dir, &old);
        let new = any_cert();
        let staged = StagedCertDir::write(&dir, &new).unwrap();
        let ca = dir.join(render::CA_CRT);
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), old.ca_pem);
        // An apply failed: the old files stay, as they were.
        drop(staged);
        assert_eq!(names(&dir), ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), old.ca_pem);
        StagedCertDir::write(&dir, &new).unwrap().commit().unwrap();
        assert_eq!(names(&dir), ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), new.ca_pem);

        let file = root.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let line = StagedCertDir::write(&file, &new).unwrap_err().line();
        assert!(
            line.starts_with(&format!(
                "--webhook-cert-dir {}: cannot create it: ",
                file.display()
            )) && line.contains("; nothing was installed; pass a directory you can write"),
            "{line}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
        // A name taken by a directory, which a rename cannot replace.
        std::fs::remove_file(dir.join(render::TLS_KEY)).unwrap();
        std::fs::create_dir(dir.join(render::TLS_KEY)).unwrap();
        let line = StagedCertDir::write(&dir, &old).unwrap_err().line();
        assert!(line.contains(": cannot write tls.key: "), "{line}");
        assert_eq!(names(&dir), ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), new.ca_pem);
    }

    fn parse(args: &[&str]) -> Install {
        let cli = crate::Cli::try_parse_from(["kubectl-mesh", "install"].iter().chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        match cli.command {
            crate::Command::Install(install) => install,
            other => panic!("not install: {other:?}"),
        }
    }

    #[test]
    fn client_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = read_client_ca(&path).unwrap_err();
        assert!(err.to_string().starts_with("--client-ca-file "), "{err}");
        let cert = any_cert();
        std::fs::write(&path, &cert.ca_pem).unwrap();
        assert_eq!(read_client_ca(&path).unwrap(), cert.ca_pem);
        assert!(read_client_ca(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn allowed_client_names_are_trimmed_and_none_may_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let cert = any_cert();
        std::fs::write(&path, &cert.ca_pem).unwrap();
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let auth = client_auth(&path, &names(&[" kube-apiserver", "front-proxy "])).unwrap();
        assert_eq!(auth.allowed_names, ["kube-apiserver", "front-proxy"]);
        let err = client_auth(&path, &names(&["kube-apiserver", " "])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--client-allowed-names holds an empty name"
        );
        // Names without a CA are refused by the command line itself.
        let err = crate::Cli::try_parse_from([
            "kubectl-mesh",
            "install",
            "--client-allowed-names=kube-apiserver",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--client-ca-file"), "{err}");
    }

    /// `--image` is the Deployment's, which `--webhook-url` does not install: refused
    /// together (it was taken and ignored). A URL alone parses whatever the environment holds
    /// (clap reads no variable for the image: see `image`).
    #[test]
    fn an_image_conflicts_with_a_webhook_url() {
        let url = "https://10.0.0.5:8443/mutate";
        for args in [
            &["--image", "registry.example.com/w:1", "--webhook-url", url][..],
            &["--webhook-url", url, "--image", "registry.example.com/w:1"],
        ] {
            let err = crate::Cli::try_parse_from(["kubectl-mesh", "install"].iter().chain(args))
                .unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}: {err}"
            );
        }
        let by_url = parse(&["--webhook-url", url]);
        assert_eq!(by_url.image, None);
        assert_eq!(by_url.webhook_url.as_deref(), Some(url));
    }

    /// The flag, then the environment (a default), then the release's image.
    #[test]
    fn the_image_is_the_flag_then_the_environment_then_the_default() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(image(some("flag"), some("env")), "flag");
        assert_eq!(image(None, some("env")), "env");
        assert_eq!(image(None, some("")), render::DEFAULT_IMAGE);
        assert_eq!(image(None, None), render::DEFAULT_IMAGE);
    }

    #[test]
    fn rule_flags_default_to_the_default_rule() {
        let install = parse(&[]);
        assert_eq!(
            install.managed_labels,
            mesh_core::labels::DEFAULT_MANAGED_LABELS.map(String::from)
        );
        assert_eq!(
            install.excluded_namespaces,
            mesh_core::labels::DEFAULT_EXCLUDED_NAMESPACES.map(String::from)
        );
    }

    #[test]
    fn rule_flags_are_comma_separated() {
        let install = parse(&[
            "--managed-labels",
            "team.example.com/zone,istio-injection",
            "--excluded-namespaces=legacy,batch",
        ]);
        assert_eq!(
            install.managed_labels,
            ["team.example.com/zone", "istio-injection"]
        );
        assert_eq!(install.excluded_namespaces, ["legacy", "batch"]);
    }

    fn labelled(labels: &[(&str, &str)]) -> ObjectMeta {
        mesh_core::fixtures::labelled(MESH_NAMESPACE, labels).metadata
    }

    #[test]
    fn install_keeps_off_a_namespace_attach_holds() {
        let attach = setup::remote_namespace("east").metadata;
        let mut recorded = attach.clone();
        recorded
            .annotations
            .get_or_insert_with(Default::default)
            .insert(setup::PRIMARY_ANNOTATION.to_owned(), "uid-a".to_owned());
        let east = |primary: Option<&str>| Attached {
            cluster: "east".into(),
            primary: primary.map(str::to_owned),
        };
        // Attach recorded its cluster on the namespace: refused, naming the primary it
        // recorded (if any).
        assert_eq!(attached_remote(&recorded), Some(east(Some("uid-a"))));
        assert_eq!(attached_remote(&attach), Some(east(None)));
        // Install's own namespace, or someone else's (where a later attach recorded nothing,
        // and install drops nothing of it): installed.
        assert_eq!(attached_remote(&render::namespace().metadata), None);
        let managed_by_gitops = labelled(&[(setup::MANAGED_BY_LABEL, "argocd")]);
        assert_eq!(attached_remote(&managed_by_gitops), None);

        let line = attached_refusal("https://10.0.0.9:6443", &east(Some("uid-a"))).line();
        assert_eq!(
            line,
            "the cluster at https://10.0.0.9:6443 is attached as remote \"east\" of primary \
             uid-a (kube-system uid); nothing was installed; install on the primary \
             (--kubeconfig/--context of the primary), or run `kubectl mesh detach east` on that \
             primary first (if that primary is gone, `kubectl delete namespace kubectl-mesh` \
             here)"
        );
    }

    #[test]
    fn dry_run_outputs() {
        let options = Options::default();
        let cert = any_cert();
        let manifests = render::render(&options, &cert).unwrap();
        let table = dry_run_output(OutputFormat::Table, &manifests).unwrap();
        assert!(table.starts_with("KIND "), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("Secret ")
                    && l.ends_with("   kubectl-mesh   mesh-webhook-tls")),
            "{table}"
        );
        let yaml = dry_run_output(OutputFormat::Yaml, &manifests).unwrap();
        assert_eq!(yaml.matches("\n---\n").count(), manifests.len() - 1);
        let json = dry_run_output(OutputFormat::Json, &manifests).unwrap();
        let list: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), manifests.len());
    }
}
