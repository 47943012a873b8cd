//! The status write of a MeshCluster against a real apiserver: it lands on the object the sync
//! read, never on one created again under the same name while the sync ran.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use mesh_core::{
    cluster::{MeshCluster, MeshClusterStatus},
    fixtures::mesh_cluster,
};
use mesh_testenv::{Options, TestEnv};
use mesh_webhook::cluster_status::write_status;

const DEADLINE: Duration = Duration::from_secs(30);

/// A primary with the MeshCluster CRD established.
async fn primary() -> anyhow::Result<(TestEnv, Client)> {
    let env = TestEnv::start(Options::with_remotes(0)).await?;
    let client = env.primary().client().await?;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &MeshCluster::crd())
        .await?;
    let established = await_condition(
        crds,
        MeshCluster::crd_name(),
        conditions::is_crd_established(),
    );
    tokio::time::timeout(DEADLINE, established).await??;
    Ok((env, client))
}

fn in_sync(namespaces: u32) -> MeshClusterStatus {
    MeshClusterStatus {
        namespaces_in_sync: namespaces,
        ..MeshClusterStatus::default()
    }
}

#[tokio::test]
async fn a_status_lands_only_on_the_object_the_sync_read() -> anyhow::Result<()> {
    let (_env, primary) = primary().await?;
    let clusters = Api::<MeshCluster>::all(primary.clone());
    let read_by_the_sync = clusters
        .create(&PostParams::default(), &mesh_cluster("east", "uid-east"))
        .await?;
    clusters.delete("east", &DeleteParams::default()).await?;
    let created_again = clusters
        .create(&PostParams::default(), &mesh_cluster("east", "uid-east"))
        .await?;
    assert_ne!(read_by_the_sync.uid(), created_again.uid());

    let refused = write_status(&primary, &read_by_the_sync, &in_sync(7)).await;
    assert!(refused.is_err(), "the old object's status was written");
    let status = clusters.get_status("east").await?.status;
    assert_eq!(status.map(|s| s.namespaces_in_sync), None);

    write_status(&primary, &created_again, &in_sync(3)).await?;
    let status = clusters.get_status("east").await?.status;
    assert_eq!(status.map(|s| s.namespaces_in_sync), Some(3));
    Ok(())
}
