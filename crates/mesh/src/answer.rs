//! The answers a layer gives by itself, without the service behind it (a refused request, an
//! injected failure), in the body type of the service it stands in front of: axum's for the HTTP
//! shims, tonic's for gRPC services.

use std::convert::Infallible;

/// What the layers here stand in front of, and `serve` serves: an HTTP service that answers every
/// request (its failures are answers, so it never errs), and that a layer can clone into a future
/// that outlives the call.
pub trait Answers<RB>:
    tower::Service<
        http::Request<RB>,
        Response = http::Response<<Self as Answers<RB>>::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The body of its answers.
    type Body;
}

impl<S, RB, B> Answers<RB> for S
where
    S: tower::Service<http::Request<RB>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Body = B;
}

/// A response body a layer can build by itself: empty (`Default`), or plain text.
pub trait TextBody: Default {
    /// A body of plain text.
    fn text(text: String) -> Self;
}

impl TextBody for axum::body::Body {
    fn text(text: String) -> Self {
        text.into()
    }
}

impl TextBody for tonic::body::Body {
    fn text(text: String) -> Self {
        tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(text)))
    }
}

/// A refusal that tells the caller to come back: `status` for a gRPC call; for HTTP, 503 with
/// `Retry-After: 1` and the status's message as one line of text.
pub fn refusal<B: TextBody>(status: tonic::Status, grpc: bool) -> http::Response<B> {
    if grpc {
        return status.into_http();
    }
    let mut response = http::Response::new(B::text(format!("{}\n", status.message())));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
