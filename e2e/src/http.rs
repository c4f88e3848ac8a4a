//! Plain HTTP/1.0 GETs against the hub's and agents' probe and metrics
//! listeners, and reading samples out of a Prometheus text exposition.

use std::io::{Read as _, Write as _};
use std::time::Duration;

/// `GET base+path` (`base` is `http://host:port`): (status, body).
///
/// # Errors
/// The connection, the request or the answer failed, or the answer is not
/// HTTP.
pub fn get(base: &str, path: &str) -> Result<(u16, String), String> {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `GET base+path`: the body of a 200 answer.
///
/// # Errors
/// As [`get`], or the status is not 200.
pub fn get_ok(base: &str, path: &str) -> Result<String, String> {
    match get(base, path)? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("GET {path}: status {status}: {body}")),
    }
}

/// The value of the sample `series` (the metric name with its labels,
/// exactly as exposed); `None` when it is not exposed.
#[must_use]
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
