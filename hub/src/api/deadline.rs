//! The server-side deadline of every `HubApi` call.
//!
//! A call that has not answered within the hub's API deadline (or the
//! client's `grpc-timeout`, when that is shorter) is dropped and answered
//! with `DEADLINE_EXCEEDED`, naming the call and the deadline: no request
//! hangs on something the hub waits for (a slow Git server, an agent that
//! does not answer). What the call started in the background (a fetch
//! joined by `app sync`) goes on under its own deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tonic::server::NamedService;

/// Default deadline of a `HubApi` call.
pub const DEFAULT_API_DEADLINE: Duration = Duration::from_secs(120);

/// Adds the deadline to a service.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    limit: Duration,
}

impl DeadlineLayer {
    /// Calls end after `limit` at the latest.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            limit: self.limit,
        }
    }
}

/// A service whose calls end at the deadline; see [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

impl<S: NamedService> NamedService for Deadline<S> {
    const NAME: &'static str = S::NAME;
}

/// The client's `grpc-timeout` header: digits and a unit (H, M, S, m, u,
/// n), as the gRPC over HTTP/2 protocol defines it.
fn client_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok().filter(|_| digits.len() <= 8)?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B, RB> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.limit;
        let limit = client_timeout(req.headers()).map_or(server, |c| c.min(server));
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer,
                Err(_) => {
                    tracing::warn!(method = %method, deadline = %crate::source::format_duration(limit), "API call exceeded its deadline");
                    let message = if limit < server {
                        format!(
                            "{method} did not finish within the client's deadline of {}",
                            crate::source::format_duration(limit)
                        )
                    } else {
                        format!(
                            "{method} did not finish within the hub's API deadline of {} (flotilla-hub --api-deadline)",
                            crate::source::format_duration(limit)
                        )
                    };
                    Ok(Status::deadline_exceeded(message).into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _};

    /// A service answering after `delay`.
    #[derive(Clone)]
    struct Slow(Duration);

    impl tower::Service<http::Request<()>> for Slow {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let delay = self.0;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(http::Response::new("answer".to_owned()))
            })
        }
    }

    fn request(timeout: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri("/flotilla.v1.HubApi/SyncApplication");
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(()).unwrap()
    }

    fn status_of(r: &http::Response<String>) -> (Option<String>, String) {
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (h("grpc-status"), h("grpc-message").unwrap_or_default())
    }

    #[tokio::test]
    async fn calls_end_at_the_deadline() {
        let layer = DeadlineLayer::new(Duration::from_millis(300));
        // In time: the answer.
        let answer = layer
            .layer(Slow(Duration::ZERO))
            .call(request(None))
            .await
            .unwrap();
        assert_eq!(answer.body(), "answer");
        // Too slow: DEADLINE_EXCEEDED (code 4), naming the call and limit.
        let late = layer
            .layer(Slow(Duration::from_secs(600)))
            .call(request(None))
            .await
            .unwrap();
        let (code, message) = status_of(&late);
        assert_eq!(code.as_deref(), Some("4"));
        let message = percent_decode(&message);
        assert!(
            message
                .contains("SyncApplication did not finish within the hub's API deadline of 300ms"),
            "{message}"
        );
        // A shorter client deadline wins, and says so.
        let late = DeadlineLayer::new(Duration::from_secs(600))
            .layer(Slow(Duration::from_secs(600)))
            .call(request(Some("200m")))
            .await
            .unwrap();
        let (code, message) = status_of(&late);
        assert_eq!(code.as_deref(), Some("4"));
        assert!(
            percent_decode(&message).contains("client's deadline of 200ms"),
            "{message}"
        );
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && let Some(h) = text.get(i + 1..i + 3)
                && let Ok(b) = u8::from_str_radix(h, 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn grpc_timeout_header() {
        let parse = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            client_timeout(&h)
        };
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("123456789S"), None);
        assert_eq!(client_timeout(&http::HeaderMap::new()), None);
    }
}
