//! The read behind [`caller_auth`](super::caller_auth)'s judgement of a webhook called by URL:
//! a TLS handshake without a client certificate, which a webhook that authenticates its
//! callers refuses.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use rustls::{AlertDescription, pki_types::ServerName};

/// What the handshake without a client certificate showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The server refused it for want of a client certificate.
    Required,
    /// The server answered over it.
    NotRequired,
    /// Something else went wrong (unreachable, untrusted server certificate...): why.
    Unknown(String),
}

/// Connects to the webhook at `url` trusting only `ca_bundle` (PEM), without a client
/// certificate, and asks for `/healthz`.
pub async fn probe(url: String, ca_bundle: Vec<u8>, timeout: Duration) -> Probe {
    // A few blocking calls, off the async workers.
    tokio::task::spawn_blocking(move || probe_blocking(&url, &ca_bundle, timeout))
        .await
        .unwrap_or_else(|e| Probe::Unknown(e.to_string()))
}

fn probe_blocking(url: &str, ca_bundle: &[u8], timeout: Duration) -> Probe {
    let unknown = |why: String| Probe::Unknown(why);
    let Some((host, port)) = host_port(url) else {
        return unknown(format!("cannot read host and port from {url}"));
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::pem::PemObject::pem_slice_iter(ca_bundle);
    for cert in certs {
        let Ok(cert) = cert else {
            return unknown("the caBundle is not PEM".into());
        };
        if let Err(e) = roots.add(cert) {
            return unknown(format!("the caBundle holds an unusable certificate: {e}"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        Err(e) => return unknown(e.to_string()),
    };
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return unknown(format!("{host} is not a valid server name"));
    };
    let connection = match rustls::ClientConnection::new(Arc::new(config), name) {
        Ok(c) => c,
        Err(e) => return unknown(e.to_string()),
    };
    let addr = match (host.as_str(), port)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        Ok(None) => return unknown(format!("{host} has no address")),
        Err(e) => return unknown(format!("cannot resolve {host}: {e}")),
    };
    let tcp = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(tcp) => tcp,
        Err(e) => return unknown(format!("cannot connect to {addr}: {e}")),
    };
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    // With TLS 1.3 the refusal comes after the client's side of the handshake: on the read.
    let result = tls.write_all(request.as_bytes()).and_then(|()| {
        let mut head = [0u8; 5];
        tls.read_exact(&mut head).map(|()| head)
    });
    match result {
        Ok(head) if head.starts_with(b"HTTP/") => Probe::NotRequired,
        Ok(head) => unknown(format!("unexpected answer {head:?}")),
        Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
                | AlertDescription::HandshakeFailure
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied,
            )) => Probe::Required,
            _ => unknown(e.to_string()),
        },
    }
}

/// Host (IPv6 without brackets) and port of an https URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 443,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), 443)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_of_urls() {
        assert_eq!(
            host_port("https://127.0.0.1:8443/mutate"),
            Some(("127.0.0.1".into(), 8443))
        );
        assert_eq!(host_port("https://[::1]:9/x"), Some(("::1".into(), 9)));
        assert_eq!(
            host_port("https://webhook.example.com/mutate"),
            Some(("webhook.example.com".into(), 443))
        );
        assert_eq!(host_port("http://a"), None);
    }
}
