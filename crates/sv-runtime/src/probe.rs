//! TCP and HTTP probes for readiness and liveness checks (`kind = "tcp"` / `"http"`).
//!
//! Each probe answers `Ok(())` or `Err(reason)`, where the reason is a short lower-case phrase
//! for `status` and the logs: `"connection refused"`, `"status 503"`, `"timed out after 1s"`.
//! Exec probes run elsewhere (they spawn a process).
//!
//! Invariants: a probe never outlives its `timeout` (the whole attempt — resolve, connect,
//! request, response head — is bounded) and never leaves a task behind; the HTTP probe follows
//! Kubernetes: a GET answered 200–399 passes, redirects are not followed, the body is not read.
//! Only `http://` URLs are supported (probes target the program's own loopback listener).
#![forbid(unsafe_code)]

use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Connects to `address` (`host:port`); passes when the connection is accepted.
pub async fn tcp(address: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(describe_io(&e)),
        Err(_) => Err(timed_out(timeout)),
    }
}

/// Sends `GET url`; passes when the status is 200–399.
pub async fn http(url: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, get_status(url)).await {
        Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(format!("status {status}")),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(timed_out(timeout)),
    }
}

async fn get_status(url: &str) -> Result<u16, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "unsupported url {url:?}: only http:// is supported"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("invalid url {url:?}: no host"))?
        .clone();
    // IPv6 literals come bracketed in URLs but not in socket addresses.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());

    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| describe_io(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| describe_hyper(&e))?;
    let req = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::USER_AGENT, "iot2mqtt-sv-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid url {url:?}: {e}"))?;
    // The connection future does the IO; drive it here rather than in a spawned task so that
    // nothing outlives the probe when its timeout drops this future. When the server closes
    // the connection (`Connection: close`), the connection future may finish before the
    // response future is polled: the response is then already waiting in it.
    let mut conn = std::pin::pin!(conn);
    let mut resp = std::pin::pin!(sender.send_request(req));
    let resp = tokio::select! {
        biased;
        r = &mut resp => r,
        done = &mut conn => match resp.await {
            Ok(r) => Ok(r),
            Err(e) => return Err(match done {
                Err(conn_err) => describe_hyper(&conn_err),
                Ok(()) => describe_hyper(&e),
            }),
        },
    };
    resp.map(|r| r.status().as_u16())
        .map_err(|e| describe_hyper(&e))
}

/// `"timed out after 1s"`, `"timed out after 250ms"`.
fn timed_out(t: Duration) -> String {
    if t.subsec_nanos() == 0 {
        format!("timed out after {}s", t.as_secs())
    } else {
        format!("timed out after {}ms", t.as_millis())
    }
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::TimedOut => "connection timed out".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => e.to_string().to_lowercase(),
    }
}

/// hyper's error with its causes, `: `-separated, so the reason says what really failed.
fn describe_hyper(e: &hyper::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        match s.downcast_ref::<std::io::Error>() {
            Some(io) => out = format!("{out}: {}", describe_io(io)),
            None => out = format!("{out}: {s}"),
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_naturally() {
        assert_eq!(timed_out(Duration::from_secs(1)), "timed out after 1s");
        assert_eq!(
            timed_out(Duration::from_millis(250)),
            "timed out after 250ms"
        );
    }
}
