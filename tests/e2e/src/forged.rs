//! Hand-made admission reviews posted straight to the webhook port, as a pod that reaches it
//! (without the apiserver's client certificate) or a holder of that certificate could.

use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// An UPDATE review of namespace `name` that sets `istio-injection=<value>` on a namespace
/// that had no label.
pub fn review(name: &str, value: &str) -> String {
    let namespace = |labels: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels}})
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("forged-{name}-{value}"),
            "kind": {"group": "", "version": "v1", "kind": "Namespace"},
            "resource": {"group": "", "version": "v1", "resource": "namespaces"},
            "name": name,
            "operation": "UPDATE",
            "userInfo": {"username": "system:serviceaccount:default:intruder"},
            "object": namespace(json!({"istio-injection": value})),
            "oldObject": namespace(json!({})),
            "dryRun": false,
        }
    })
    .to_string()
}

/// A TLS connection to the webhook port at `addr` (the handshake's client side done).
pub async fn connect(connector: &TlsConnector, addr: &str) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    Ok(connector.connect(name, tcp).await?)
}

/// POSTs `review` to `/mutate` on `tls`; the whole answer. A server that refused the client's
/// certificate fails here: TLS 1.3 tells the client after its side of the handshake.
pub async fn send(
    tls: &mut TlsStream<TcpStream>,
    addr: &str,
    review: &str,
) -> anyhow::Result<String> {
    let request = format!(
        "POST /mutate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{review}",
        review.len()
    );
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer).await {
        Ok(_) => {}
        // A server may close without close_notify; what was read is what counts.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(error) => return Err(error.into()),
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// [`connect`], then [`send`].
pub async fn post(connector: &TlsConnector, addr: &str, review: &str) -> anyhow::Result<String> {
    send(&mut connect(connector, addr).await?, addr, review).await
}
