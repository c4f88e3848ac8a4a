//! Limits in front of the gRPC services for everything a peer can reach
//! without a client certificate, applied before tonic buffers a message.
//!
//! - `AgentLink.Enroll` (the one RPC meant for peers without a
//!   certificate): at most [`MAX_ENROLL_MESSAGE`] bytes, checked on the gRPC
//!   length prefix as it arrives and on every byte received, a deadline of
//!   [`ENROLL_DEADLINE`] for the whole call, and at most
//!   [`MAX_ENROLL_IN_FLIGHT_PER_SOURCE`] calls in flight per source address
//!   ([`MAX_ENROLL_IN_FLIGHT`] in all).
//! - Every other `AgentLink` call from a connection without a verified
//!   client certificate is refused before its body is read (`Renew` is
//!   unary: tonic would otherwise decode up to the service's message limit
//!   before the handler could look at the peer).
//! - `HubApi` calls are checked by the bearer-token interceptor, which runs
//!   on the headers before the body is decoded.
//!
//! Why a layer and not tonic's `max_decoding_message_size`: that limit is
//! per service, and `Enroll` shares the `AgentLink` service with `Connect`,
//! whose limit must stay large for authenticated agents. A second service
//! instance routed by path would give the size limit but not the deadline
//! or the per-source cap; one layer that looks at the path and the peer
//! certificate gives all three in one place.
//!
//! The layer also marks each request in flight on its connection, for the
//! idle timeout of [`crate::listener`].

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::listener::{ConnRegistry, GuardedBody};

/// Path of `AgentLink.Enroll`.
pub const ENROLL_PATH: &str = "/flotilla.v1.AgentLink/Enroll";
const AGENT_LINK_PREFIX: &str = "/flotilla.v1.AgentLink/";
/// Largest enrollment request (a token and a CSR are about 1 KiB).
pub const MAX_ENROLL_MESSAGE: usize = 64 * 1024;
/// Longest an enrollment call may take, body included.
pub const ENROLL_DEADLINE: Duration = Duration::from_secs(10);
/// Enrollment calls in flight, from all sources.
pub const MAX_ENROLL_IN_FLIGHT: usize = 64;
/// Enrollment calls in flight per source address.
pub const MAX_ENROLL_IN_FLIGHT_PER_SOURCE: usize = 8;

/// Calls in flight per source address, with a cap per source and in all.
#[derive(Debug, Default)]
struct InFlight {
    state: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

struct InFlightSlot {
    owner: Arc<InFlight>,
    source: IpAddr,
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut st = self.owner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = st.0.saturating_sub(1);
        if let Some(n) = st.1.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                st.1.remove(&self.source);
            }
        }
    }
}

impl InFlight {
    fn acquire(self: &Arc<Self>, source: IpAddr) -> Option<InFlightSlot> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mine = st.1.get(&source).copied().unwrap_or(0);
        if mine >= MAX_ENROLL_IN_FLIGHT_PER_SOURCE || st.0 >= MAX_ENROLL_IN_FLIGHT {
            return None;
        }
        st.0 += 1;
        *st.1.entry(source).or_insert(0) += 1;
        Some(InFlightSlot {
            owner: self.clone(),
            source,
        })
    }
}

/// The layer; see the module documentation.
#[derive(Clone, Debug)]
pub struct GuardLayer {
    registry: Arc<ConnRegistry>,
    enroll: Arc<InFlight>,
}

impl GuardLayer {
    /// A layer marking requests on the connections of `registry`.
    pub fn new(registry: Arc<ConnRegistry>) -> Self {
        Self {
            registry,
            enroll: Arc::default(),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`GuardLayer`].
#[derive(Clone, Debug)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

fn status_response(status: Status) -> http::Response<Body> {
    status.into_http()
}

impl<S> tower::Service<http::Request<Body>> for Guard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The service that was polled ready handles this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let info = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .cloned();
            let peer = info.as_ref().and_then(|i| i.get_ref().remote_addr());
            let has_certificate = info
                .as_ref()
                .and_then(TlsConnectInfo::peer_certs)
                .is_some_and(|c| !c.is_empty());
            let active = peer
                .and_then(|p| layer.registry.activity(p))
                .map(|a| a.begin());
            let path = req.uri().path();
            if path == ENROLL_PATH {
                let source = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
                let Some(slot) = layer.enroll.acquire(source) else {
                    crate::metrics::metrics().enrollment_refused("in_flight");
                    return Ok(status_response(Status::resource_exhausted(
                        "too many enrollment requests in flight from this address; try again later",
                    )));
                };
                let req = req.map(|b| Body::new(LimitedBody::new(b, MAX_ENROLL_MESSAGE)));
                return match tokio::time::timeout(ENROLL_DEADLINE, inner.call(req)).await {
                    Ok(Ok(resp)) => {
                        Ok(resp.map(|b| Body::new(GuardedBody::new(b, (active, slot)))))
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => {
                        crate::metrics::metrics().enrollment_refused("deadline");
                        Ok(status_response(Status::deadline_exceeded(format!(
                            "the enrollment request did not complete within {}s",
                            ENROLL_DEADLINE.as_secs()
                        ))))
                    }
                };
            }
            if path.starts_with(AGENT_LINK_PREFIX) && !has_certificate {
                return Ok(status_response(Status::unauthenticated(
                    "a client certificate is required",
                )));
            }
            let resp = inner.call(req).await?;
            Ok(resp.map(|b| Body::new(GuardedBody::new(b, active))))
        })
    }
}

/// A request body cut off at `limit` bytes of gRPC message: the length
/// prefix is checked as soon as its five bytes arrived, so an oversized
/// message is refused before tonic reserves room for it, and every byte
/// received counts, so a peer cannot stream past the limit either.
struct LimitedBody {
    inner: Body,
    limit: usize,
    received: usize,
    prefix: Vec<u8>,
}

impl LimitedBody {
    fn new(inner: Body, limit: usize) -> Self {
        Self {
            inner,
            limit,
            received: 0,
            prefix: Vec::with_capacity(5),
        }
    }

    fn too_large(&self) -> Status {
        crate::metrics::metrics().enrollment_refused("too_large");
        Status::resource_exhausted(format!(
            "enrollment request larger than {} KiB",
            self.limit / 1024
        ))
    }

    /// Accounts for `data`; an error when the message is too large.
    fn account(&mut self, data: &Bytes) -> Result<(), Status> {
        self.received = self.received.saturating_add(data.len());
        if self.prefix.len() < 5 {
            let take = (5 - self.prefix.len()).min(data.len());
            self.prefix.extend_from_slice(&data[..take]);
            if self.prefix.len() == 5 {
                let declared = (&self.prefix[1..5]).get_u32() as usize;
                if declared > self.limit {
                    return Err(self.too_large());
                }
            }
        }
        // One message: its prefix and at most `limit` bytes.
        if self.received > self.limit.saturating_add(5) {
            return Err(self.too_large());
        }
        Ok(())
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref()
            && let Err(status) = self.account(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(declared: u32, body: usize) -> Bytes {
        let mut v = vec![0u8];
        v.extend_from_slice(&declared.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, body));
        Bytes::from(v)
    }

    #[test]
    fn the_length_prefix_is_checked_before_the_message_arrives() {
        let mut b = LimitedBody::new(Body::empty(), 1024);
        // Split prefix, declaring more than the limit.
        let f = frame(60 * 1024 * 1024, 0);
        assert!(b.account(&f.slice(0..2)).is_ok());
        assert_eq!(
            b.account(&f.slice(2..5)).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn bytes_past_the_limit_are_refused() {
        let mut b = LimitedBody::new(Body::empty(), 1024);
        assert!(b.account(&frame(1000, 1000)).is_ok());
        assert!(b.account(&Bytes::from(vec![0u8; 100])).is_err());
        let mut ok = LimitedBody::new(Body::empty(), 1024);
        assert!(ok.account(&frame(1024, 1024)).is_ok());
    }

    #[test]
    fn in_flight_is_capped_per_source() {
        let f = Arc::new(InFlight::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..MAX_ENROLL_IN_FLIGHT_PER_SOURCE)
            .map(|_| f.acquire(a).unwrap())
            .collect();
        assert!(f.acquire(a).is_none());
        assert!(f.acquire(b).is_some());
        drop(held);
        assert!(f.acquire(a).is_some());
    }
}
