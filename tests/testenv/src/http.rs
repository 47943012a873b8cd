//! Raw HTTP/1.1 requests to a local server over a plain TCP connection, for tests that must say
//! exactly what is sent (a foreign Host header, say) with no client library in between.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The answer to `GET <target>` sent over HTTP/1.1 to 127.0.0.1:`port` with `host` as its Host
/// header (and `Connection: close`), read until the server closes: its status line and its body
/// (empty when the answer has no end of header).
pub async fn get(port: u16, host: &str, target: &str) -> anyhow::Result<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_sends_the_host_it_is_given_and_splits_the_answer() {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                stream.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
                .await
                .unwrap();
            String::from_utf8(request).unwrap()
        });
        let (status, body) = get(port, "elsewhere.example:1", "/x?y=1").await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "hi");
        assert_eq!(
            server.await.unwrap(),
            "GET /x?y=1 HTTP/1.1\r\nHost: elsewhere.example:1\r\nConnection: close\r\n\r\n"
        );
    }
}
