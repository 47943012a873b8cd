//! What one port's clients may hold of the server, and for how long: [`Limits::default`] for
//! the webhook port, where the apiserver calls, and [`Limits::metrics_port`] for the port of
//! probes and metrics, which any pod may reach.

use std::time::Duration;

/// The smallest HTTP/1.1 read buffer hyper accepts.
pub(super) const HTTP1_MIN_BUF_SIZE: usize = 8192;

/// What one client may hold of the server, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time to send a request's headers once the server waits for them. hyper starts this
    /// clock as soon as an HTTP/1.1 connection waits for its next request, so it also bounds
    /// the idle time of HTTP/1.1 keep-alive connections. It also bounds, from when it was
    /// accepted, a connection that has not made a request yet (HTTP/2 ones included): a real
    /// client sends one as soon as it has connected.
    pub header_read_timeout: Duration,
    /// A connection without a request in progress for this long, once it made one, is closed.
    pub idle_timeout: Duration,
    /// Time to receive a request's whole body, from when its headers came.
    pub body_timeout: Duration,
    /// Connections open at once, handshakes included; past it, a new one takes the place of
    /// the one idle longest, and accepting waits only while every one has a request in
    /// progress.
    pub max_connections: usize,
    /// HTTP/2 connections are pinged this often...
    pub http2_keepalive_interval: Duration,
    /// ...and closed when a ping is not answered within this.
    pub http2_keepalive_timeout: Duration,
    /// Bytes of a request body an HTTP/2 client may send ahead of what the handler has read
    /// (the initial stream window). hyper holds them until read.
    pub http2_stream_window: u32,
    /// Bytes of all request bodies of one HTTP/2 connection a client may send ahead of what
    /// the handlers have read (the connection window): what hyper may hold per connection.
    pub http2_connection_window: u32,
    /// Requests in progress at once on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
    /// Largest read buffer of an HTTP/1.1 connection (request head and body bytes read ahead,
    /// give or take one read); a request head that does not fit is refused (431). At least
    /// 8 KiB (hyper's minimum).
    pub http1_max_buf_size: usize,
}

impl Default for Limits {
    /// The webhook port's. Go's net/http and Envoy-class values: headers and bodies in 10 s (an
    /// AdmissionReview is a few KiB), idle connections kept 120 s, above the 90 s after which
    /// the apiserver's client drops idle connections itself, so the client, not the server,
    /// closes them and never reuses one the server is closing. A connection that has made no
    /// request yet gets the header read time only: the apiserver sends its review as soon as it
    /// has connected.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(10),
            max_connections: 4096,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            // hyper's defaults (1 MiB windows, a ~400 KiB HTTP/1.1 buffer) times 4096
            // connections are gigabytes strangers could make it hold. A review of 1 MiB
            // (`http::BODY_LIMIT`) still goes through, with more WINDOW_UPDATEs; a few-KiB one
            // fits the first window, no round trip waited for.
            http2_stream_window: 64 << 10,
            // Four whole stream windows: concurrent reviews on one connection flow at once.
            http2_connection_window: 256 << 10,
            // Requests in progress on one connection are handler work a single connection
            // holds, and a connection with one is never evicted: 32 is far more than the
            // reviews an apiserver has in flight on one connection, and past it Go's HTTP/2
            // client, the apiserver's, opens another connection rather than queue
            // (x/net/http2 Transport.StrictMaxConcurrentStreams is false by default, and
            // client-go sets only its ping timeouts), so it costs it a handshake, not a wait.
            http2_max_concurrent_streams: 32,
            // An apiserver's request head is a few hundred bytes; bodies are read as they come.
            http1_max_buf_size: 64 << 10,
        }
    }
}

impl Limits {
    /// The metrics port's: the webhook port's timeouts, the rest sized for its callers, the
    /// kubelet's probes (a connection each) and a few Prometheus scrapers (one kept each),
    /// whose requests are small GETs. Any pod may reach it: with the webhook port's 4096
    /// connections of up to 64 KiB of buffers each, one pod's flood of it took the process to
    /// ~400 MiB, past its memory limit (256 MiB); these hold a few MiB. Past the 64, an idle
    /// connection still makes room for a probe (eviction).
    pub fn metrics_port() -> Self {
        Self {
            max_connections: 64,
            http2_stream_window: 8 << 10,
            // Four whole stream windows, as many as its streams.
            http2_connection_window: 32 << 10,
            http2_max_concurrent_streams: 4,
            http1_max_buf_size: HTTP1_MIN_BUF_SIZE,
            ..Self::default()
        }
    }

    /// Sockets the port may hold: `max_connections` open, and the evicted ones still closing.
    pub fn max_sockets(&self) -> usize {
        let max = self.max_connections.max(1);
        max + super::eviction::max_closing(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a flood of the metrics port can make hyper hold of request heads and bodies, every
    /// place taken: a few MiB (the webhook port's limits there allowed a GiB).
    #[test]
    fn a_flood_of_the_metrics_port_holds_a_few_mib_of_buffers() {
        let held = |limits: Limits| {
            let http2 = (limits.http2_connection_window as usize).min(
                limits.http2_max_concurrent_streams as usize * limits.http2_stream_window as usize,
            );
            limits.max_sockets() * http2.max(limits.http1_max_buf_size)
        };
        assert!(held(Limits::metrics_port()) <= 4 << 20);
        assert!(held(Limits::default()) >= 1 << 30);
    }
}
