//! A Git smart-HTTP server on loopback for fault tests: it serves the
//! repositories under a directory through `git http-backend`, and can be
//! told to stall (read the request, never answer) or drip (answer one byte
//! at a time) for one repository while serving the others normally.
//!
//! It counts, per repository, the requests it got, the connections it is
//! holding (stalled or dripping) right now and at most at once, and how
//! many of those the client closed: enough to see that a client gives up
//! at its deadline and never piles up connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How the server answers for one repository.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers normally.
    #[default]
    Serve,
    /// Reads the request and never answers; holds the connection until the
    /// client closes it.
    Stall,
    /// Answers one byte every interval.
    Drip(Duration),
}

/// What happened to one repository's requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepoStats {
    /// Requests received.
    pub requests: u64,
    /// Connections stalled or dripping right now.
    pub held_now: usize,
    /// Most connections stalled or dripping at once.
    pub held_max: usize,
    /// Held connections the client closed.
    pub closed_by_client: u64,
}

#[derive(Debug, Default)]
struct State {
    behaviours: HashMap<String, Behaviour>,
    stats: HashMap<String, RepoStats>,
}

/// The server; stops when dropped.
#[derive(Debug)]
pub struct GitHttpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitHttpServer {
    /// Serves the repositories under `root` (`root/NAME` is
    /// `http://ADDR/NAME`) on a free loopback port.
    ///
    /// # Errors
    /// No port could be bound.
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let root = root.to_owned();
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (root, st) = (root.clone(), st.clone());
                tokio::spawn(async move {
                    let _ = handle(conn, &root, &st).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// URL of the repository `root/name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// Sets how requests for `name` are answered from now on.
    pub fn set(&self, name: &str, behaviour: Behaviour) {
        self.lock().behaviours.insert(name.to_owned(), behaviour);
    }

    /// What happened to the requests for `name` so far.
    pub fn stats(&self, name: &str) -> RepoStats {
        self.lock().stats.get(name).copied().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn read_request(conn: &mut TcpStream) -> anyhow::Result<Request> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        anyhow::ensure!(buf.len() < 64 * 1024, "request head too long");
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed in the request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse()?;
        while rest.len() < len {
            read_more(conn, &mut rest).await?;
        }
        rest.truncate(len);
        rest
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                read_more(conn, &mut rest).await?;
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
            rest.drain(..line_end + 2);
            while rest.len() < size + 2 {
                read_more(conn, &mut rest).await?;
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        Vec::new()
    };
    Ok(Request {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body,
    })
}

async fn read_more(conn: &mut TcpStream, rest: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = conn.read(&mut chunk).await?;
    anyhow::ensure!(n > 0, "connection closed in the request body");
    rest.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Runs `git http-backend` for `req`; returns the raw HTTP response.
async fn backend(root: &Path, req: &Request) -> anyhow::Result<Vec<u8>> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if let Some(t) = req.headers.get("content-type") {
        cmd.env("CONTENT_TYPE", t);
    }
    if let Some(p) = req.headers.get("git-protocol") {
        cmd.env("GIT_PROTOCOL", p);
    }
    if let Some(e) = req.headers.get("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", e);
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&req.body).await?;
    }
    let out = child.wait_with_output().await?;
    let raw = out.stdout;
    let (head_len, sep) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => (
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .ok_or_else(|| anyhow::anyhow!("http-backend printed no header"))?,
            2,
        ),
    };
    let head = String::from_utf8_lossy(&raw[..head_len]).into_owned();
    let body = &raw[head_len + sep..];
    let mut status = "200 OK".to_owned();
    let mut response = String::new();
    for line in head.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            Some(_) => {
                response.push_str(line);
                response.push_str("\r\n");
            }
            None => {}
        }
    }
    let mut out = format!(
        "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Ok(out)
}

async fn handle(mut conn: TcpStream, root: &Path, state: &Arc<Mutex<State>>) -> anyhow::Result<()> {
    let req = read_request(&mut conn).await?;
    let name = req
        .path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let behaviour = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.stats.entry(name.clone()).or_default().requests += 1;
        st.behaviours.get(&name).copied().unwrap_or_default()
    };
    let hold = |delta: isize, closed: bool| {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let s = st.stats.entry(name.clone()).or_default();
        s.held_now = s.held_now.saturating_add_signed(delta);
        s.held_max = s.held_max.max(s.held_now);
        if closed {
            s.closed_by_client += 1;
        }
    };
    match behaviour {
        Behaviour::Serve => {
            let response = backend(root, &req).await?;
            conn.write_all(&response).await?;
            conn.shutdown().await?;
        }
        Behaviour::Stall => {
            hold(1, false);
            // Nothing is sent; the connection ends when the client closes it.
            let mut sink = [0u8; 1024];
            loop {
                match conn.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            hold(-1, true);
        }
        Behaviour::Drip(every) => {
            let response = backend(root, &req).await?;
            hold(1, false);
            let mut closed = false;
            for byte in response {
                if conn.write_all(&[byte]).await.is_err() || conn.flush().await.is_err() {
                    closed = true;
                    break;
                }
                // A closed connection shows as readable at EOF.
                let mut probe = [0u8; 1];
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    r = conn.read(&mut probe) => {
                        if matches!(r, Ok(0) | Err(_)) {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            hold(-1, closed);
        }
    }
    Ok(())
}
