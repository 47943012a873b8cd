//! Per-cluster credentials: a CA, the apiserver's serving certificate, an admin client
//! certificate and the service-account signing key. Each cluster gets its own, so a token or
//! certificate of one cluster is worthless on another, as between real clusters.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM files of one cluster, written under its directory.
#[derive(Clone, Debug)]
pub struct ClusterPki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
    pub ca_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

/// A new self-signed CA named `name`: its PEM and what signs with it.
pub(crate) fn new_ca(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    Ok((ca_cert.pem(), Issuer::new(ca_params, ca_key)))
}

/// A client certificate for user `name` signed by `issuer`: its PEM and its key's.
pub(crate) fn client_cert(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl ClusterPki {
    /// Credentials of `cluster`, whose apiserver serves on loopback and on `also_at` (with the
    /// first address of the Service range, as the `kubernetes` Service that pods call).
    pub fn generate(cluster: &str, dir: &Path, also_at: Option<Ipv4Addr>) -> anyhow::Result<Self> {
        let (ca_pem, issuer) = new_ca(&format!("{cluster}-ca"))?;

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        if let Some(address) = also_at {
            for ip in [address, crate::env::KUBERNETES_SERVICE_IP] {
                serving
                    .subject_alt_names
                    .push(SanType::IpAddress(IpAddr::V4(ip)));
            }
        }
        serving
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster}-apiserver"));
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        // CN is the user name, O the group: system:masters is bound to cluster-admin.
        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name.push(DnType::CommonName, "admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;

        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(Self {
            ca_cert: write("ca.crt", &ca_pem)?,
            serving_cert: write("apiserver.crt", &serving_cert.pem())?,
            serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
            service_account_key: write("service-account.key", &sa_key.serialize_pem())?,
            // The apiserver verifies with public keys only; it does not derive them from PKCS#8.
            service_account_public_key: write("service-account.pub", &sa_key.public_key_pem())?,
            ca_pem,
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
        })
    }
}
