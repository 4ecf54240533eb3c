//! The front door as one tower layer over the whole server: every call is admitted or refused
//! here before any service sees it, and an admitted call carries its [`Caller`] in the request
//! extensions for the handlers.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::access::{Admission, Credentials, FrontDoor, QuerySlot};
use crate::api::status::access_status;

/// Applies a [`FrontDoor`] to every call.
#[derive(Debug, Clone)]
pub struct FrontDoorLayer {
    door: Arc<FrontDoor>,
}

impl FrontDoorLayer {
    /// A layer over `door`.
    pub fn new(door: Arc<FrontDoor>) -> Self {
        FrontDoorLayer { door }
    }
}

impl<S> Layer<S> for FrontDoorLayer {
    type Service = FrontDoorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FrontDoorService {
            door: Arc::clone(&self.door),
            inner,
        }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct FrontDoorService<S> {
    door: Arc<FrontDoor>,
    inner: S,
}

impl<S> Service<http::Request<Body>> for FrontDoorService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready goes to this call; the fresh clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let door = Arc::clone(&self.door);
        Box::pin(async move {
            let peer = peer_address(&request);
            let headers = request.headers();
            let credentials = Credentials {
                authorization: headers
                    .get(http::header::AUTHORIZATION)
                    .map(|value| value.as_bytes()),
                api_key: headers.get("x-api-key").map(|value| value.as_bytes()),
            };
            let admission = door.admit(request.uri().path(), credentials, peer).await;
            match admission {
                Err(error) => Ok(access_status(&error).into_http()),
                Ok(Admission::Exempt) => inner.call(request).await,
                Ok(Admission::Caller { caller, slot }) => {
                    request.extensions_mut().insert(caller);
                    let response = inner.call(request).await?;
                    Ok(match slot {
                        Some(slot) => {
                            response.map(|body| Body::new(SlotBody { body, _slot: slot }))
                        }
                        None => response,
                    })
                }
            }
        })
    }
}

fn peer_address<B>(request: &http::Request<B>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|address| address.ip())
}

/// A response body holding its query slot until the stream ends or the caller goes: a query
/// runs for as long as its response streams, not only until the handler returns.
struct SlotBody {
    body: Body,
    _slot: QuerySlot,
}

impl HttpBody for SlotBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
