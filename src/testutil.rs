//! A loopback HTTP/1.1 server for the engine's unit tests: canned replies, optional delay, a record
//! of the requests it saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct Canned {
    status: u16,
    body: String,
    delay: Duration,
}

impl Canned {
    pub fn json(status: u16, body: &str) -> Canned {
        Canned { status, body: body.to_string(), delay: Duration::ZERO }
    }
    pub fn delayed(mut self, d: Duration) -> Canned {
        self.delay = d;
        self
    }
}

pub struct TestServer {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl TestServer {
    pub async fn start(reply: Canned) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let reply = reply.clone();
                let seen = seen2.clone();
                let conn = tokio::spawn(async move {
                    loop {
                        let Some(req) = read_request(&mut sock).await else { return };
                        seen.lock().unwrap().push(req);
                        tokio::time::sleep(reply.delay).await;
                        let resp = format!(
                            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                            reply.status,
                            reply.body.len(),
                            reply.body
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        TestServer { port, seen, task, conns }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting and drops every open connection, as a provider going down would.
    pub async fn stop(self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        self.task.abort();
        let _ = self.task.await;
    }

    /// A loopback port with nothing listening.
    pub fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Some(String::from_utf8_lossy(&buf[..end + 4 + len]).to_string());
        }
    }
}
