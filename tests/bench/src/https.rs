//! HTTPS/1.1 keep-alive connections to mesh-webhook: the load generator's and the metrics
//! scraper's. hyper's low-level client, so that one connection is exactly one TLS session.

use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mesh_testenv::WebhookClient;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

/// Trusts only `ca_pem` (the webhook's CA, written by `kubectl-mesh install`); presents
/// `identity` (the apiserver's client certificate and key, PEM files) when given, as the
/// webhook port requires when it authenticates its callers.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&WebhookClient>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("reading the webhook CA")?)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some(identity) => {
            let chain = CertificateDer::pem_file_iter(&identity.cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading {}", identity.cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&identity.key)
                .with_context(|| format!("reading {}", identity.key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// One keep-alive connection to `addr` (`127.0.0.1:<port>`).
pub async fn connect(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from(host)?, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; either way nothing to report.
        let _ = connection.await;
    });
    Ok(sender)
}

/// A request for `sender`: `body` is POSTed as JSON, `None` is a GET.
pub fn request(addr: &str, path: &str, body: Option<Bytes>) -> hyper::Request<Full<Bytes>> {
    let builder = hyper::Request::builder()
        .uri(path)
        .header(hyper::header::HOST, addr);
    let result = match body {
        Some(body) => builder
            .method(hyper::Method::POST)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body)),
        None => builder
            .method(hyper::Method::GET)
            .body(Full::new(Bytes::new())),
    };
    // Every part is a constant or a valid address: the builder cannot fail.
    result.unwrap_or_else(|_| hyper::Request::new(Full::new(Bytes::new())))
}

/// Sends one request and reads the whole answer; fails unless it is 200.
pub async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<Bytes> {
    sender.ready().await.context("connection closed")?;
    let path = request.uri().path().to_owned();
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != hyper::StatusCode::OK {
        bail!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body)
}

/// `GET https://<addr>/metrics` on a fresh connection.
pub async fn metrics(addr: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<String> {
    let mut sender = connect(addr, tls).await?;
    let body = call(&mut sender, request(addr, "/metrics", None)).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `name{labels}` in a Prometheus text exposition, 0 when absent (a
/// counter not yet incremented is not exposed). Every pair of `labels` must match.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let set = rest.strip_suffix('}')?;
            let matches = labels
                .iter()
                .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_by_name_and_labels() {
        let text = "# HELP syncs Full syncs\n# TYPE syncs counter\n\
            syncs_total{cluster=\"remote-1\",result=\"ok\"} 3\n\
            syncs_total{cluster=\"remote-2\",result=\"ok\"} 5\n\
            syncs_total{cluster=\"remote-1\",result=\"unreachable\"} 1\n\
            admission_reviews_total{outcome=\"no_push\"} 7\n\
            up 1\n# EOF\n";
        assert_eq!(
            sample(
                text,
                "syncs_total",
                &[("cluster", "remote-1"), ("result", "ok")]
            ),
            3.0
        );
        assert_eq!(sample(text, "syncs_total", &[("result", "ok")]), 8.0);
        assert_eq!(sample(text, "syncs_total", &[]), 9.0);
        assert_eq!(
            sample(text, "admission_reviews_total", &[("outcome", "pushed")]),
            0.0
        );
        assert_eq!(sample(text, "up", &[]), 1.0);
        assert_eq!(sample(text, "syncs", &[]), 0.0);
    }
}
