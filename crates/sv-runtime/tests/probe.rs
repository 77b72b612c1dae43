//! TCP and HTTP probes against real listeners on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;

use sv_runtime::probe;
use sv_testkit::free_port;

/// A probe timeout that passing probes never come near.
const GENEROUS: Duration = Duration::from_secs(20);

/// A one-shot-per-connection HTTP server answering every request with `status`; the request
/// lines it saw are sent on the returned channel.
fn http_server(status: u16) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let _ = tx.send(head);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn tcp_passes_when_something_listens() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    assert_eq!(probe::tcp(&addr, GENEROUS).await, Ok(()));
}

#[tokio::test]
async fn tcp_fails_with_connection_refused() {
    let addr = format!("127.0.0.1:{}", free_port());
    assert_eq!(
        probe::tcp(&addr, GENEROUS).await,
        Err("connection refused".into())
    );
}

#[tokio::test]
async fn http_passes_on_200_and_sends_a_get_for_the_path() {
    let (addr, seen) = http_server(200);
    let url = format!("http://{addr}/health?full=1");
    assert_eq!(probe::http(&url, GENEROUS).await, Ok(()));
    let head = seen.recv_timeout(GENEROUS).unwrap();
    assert!(
        head.starts_with("GET /health?full=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_lowercase().contains(&format!("host: {addr}")),
        "{head}"
    );
}

#[tokio::test]
async fn http_passes_on_a_redirect_without_following_it() {
    let (addr, _) = http_server(302);
    assert_eq!(
        probe::http(&format!("http://{addr}/"), GENEROUS).await,
        Ok(())
    );
}

#[tokio::test]
async fn http_fails_on_503_with_the_status() {
    let (addr, _) = http_server(503);
    assert_eq!(
        probe::http(&format!("http://{addr}/ready"), GENEROUS).await,
        Err("status 503".into())
    );
    let (addr, _) = http_server(404);
    assert_eq!(
        probe::http(&format!("http://{addr}"), GENEROUS).await,
        Err("status 404".into())
    );
}

#[tokio::test]
async fn http_fails_with_connection_refused() {
    let url = format!("http://127.0.0.1:{}/", free_port());
    assert_eq!(
        probe::http(&url, GENEROUS).await,
        Err("connection refused".into())
    );
}

#[tokio::test]
async fn http_times_out_when_the_server_never_answers() {
    // Accepted by the kernel (backlog), never answered.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    assert_eq!(
        probe::http(&url, Duration::from_millis(200)).await,
        Err("timed out after 200ms".into())
    );
    drop(listener);
}

#[tokio::test]
async fn http_fails_when_the_server_hangs_up() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            // Dropping the stream closes the connection without a response.
        }
    });
    let err = probe::http(&format!("http://{addr}/"), GENEROUS)
        .await
        .unwrap_err();
    assert!(
        err.contains("closed") || err.contains("reset") || err.contains("incomplete"),
        "{err}"
    );
}

#[tokio::test]
async fn http_rejects_urls_it_cannot_probe() {
    let err = probe::http("https://127.0.0.1:1/", GENEROUS)
        .await
        .unwrap_err();
    assert!(err.contains("only http://"), "{err}");
    let err = probe::http("not a url", GENEROUS).await.unwrap_err();
    assert!(err.starts_with("invalid url"), "{err}");
    let err = probe::http("/relative", GENEROUS).await.unwrap_err();
    assert!(err.contains("only http://"), "{err}");
}
