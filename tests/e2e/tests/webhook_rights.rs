//! The webhook's rights on the primary are what its code uses and nothing more. (That they
//! are enough is shown by every other test: the test environment runs the webhook with its
//! ServiceAccount's token.)

use std::collections::BTreeSet;

use mesh_e2e::{kubectl, shared_mesh};
use mesh_testenv::TestEnv;
use mesh_testenv::mesh::WEBHOOK_ACCOUNT;

/// What the webhook does on the primary in every namespace, as `kubectl auth can-i --list`
/// prints it: `resource [resource names] [verbs]`.
const EXPECTED: &[&str] = &[
    "namespaces [] [get list watch]",
    "meshclusters.kubectl-mesh.io [] [get list watch]",
    "meshclusters.kubectl-mesh.io/status [] [patch]",
];

/// What it does in the mesh namespace only: the stored kubeconfigs (update: renewed tokens) and
/// the leader's Lease, its own by name (a create cannot be narrowed so).
const EXPECTED_IN_MESH_NAMESPACE: &[&str] = &[
    "secrets [] [get list watch update]",
    "leases.coordination.k8s.io [] [create]",
    "leases.coordination.k8s.io [mesh-webhook] [get update]",
];

/// What it does in `default` only: Events about Namespaces and MeshClusters, which kube's
/// Recorder creates (and patches for a repeat) there, these being cluster-scoped.
const EXPECTED_IN_DEFAULT: &[&str] = &["events.events.k8s.io [] [create patch]"];

/// The resource rows of `kubectl auth can-i --list` in `namespace` for ServiceAccount
/// `account` of the mesh namespace, whitespace folded.
async fn resource_rights(
    env: &TestEnv,
    account: &str,
    namespace: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let output = kubectl(
        env,
        env.primary(),
        &[
            "auth",
            "can-i",
            "--list",
            "--namespace",
            namespace,
            &format!(
                "--as=system:serviceaccount:{}:{account}",
                mesh_core::MESH_NAMESPACE
            ),
        ],
    )
    .await?;
    Ok(output
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            let resource = columns.next().filter(|c| !c.starts_with('['))?;
            let _non_resource_urls = columns.next()?;
            let rest: Vec<&str> = columns.collect();
            Some(format!("{resource} {}", rest.join(" ")))
        })
        .collect())
}

#[tokio::test]
async fn the_webhook_may_do_what_its_code_does_and_no_more() -> anyhow::Result<()> {
    let (env, _mesh) = shared_mesh(0).await;
    // Whatever any account may do on this apiserver is not the webhook's doing.
    kubectl(
        env,
        env.primary(),
        &[
            "create",
            "serviceaccount",
            "nobody",
            "-n",
            mesh_core::MESH_NAMESPACE,
        ],
    )
    .await?;
    // kube-system: a namespace where the webhook has nothing of its own (no Events either).
    for (namespace, own) in [
        (mesh_core::MESH_NAMESPACE, EXPECTED_IN_MESH_NAMESPACE),
        ("default", EXPECTED_IN_DEFAULT),
        ("kube-system", &[][..]),
    ] {
        let baseline = resource_rights(env, "nobody", namespace).await?;
        let granted: BTreeSet<String> = resource_rights(env, WEBHOOK_ACCOUNT, namespace)
            .await?
            .difference(&baseline)
            .cloned()
            .collect();
        let expected: BTreeSet<String> = EXPECTED
            .iter()
            .chain(own)
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            granted, expected,
            "granted in {namespace} beyond the baseline: {granted:#?}\nbaseline: {baseline:#?}"
        );
    }
    Ok(())
}
