//! gRPC: `hcn.v1.Prerank` (SPEC §7) and the standard `grpc.health.v1.Health`, served through
//! axum's HTTP/2 server (so the `grpc-timeout` deadline is the engine's own, answered as
//! DEADLINE_EXCEEDED, not tonic's transport timer, which answers CANCELLED).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use super::batcher::{Answer, Job, Queue, Rejected};
use super::pb::prerank_server::{Prerank, PrerankServer};
use super::pb::{InfoRequest, InfoResponse, ScoreRequest, ScoreResponse, ScoredItem};
use super::{no_delay, stamp_headers, HeadersAt, State};
use crate::{CancelToken, ErrorKind, Request, RunOptions, UserRequest};

/// `hcn.v1.Prerank`.
pub struct Service {
    state: Arc<State>,
    queue: Queue,
}

/// The gRPC status of an engine error.
pub fn status_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::LimitExceeded => Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::Cancelled => Code::Cancelled,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::InvalidModel => Code::FailedPrecondition,
        _ => Code::Internal,
    }
}

/// `grpc-timeout` (gRPC over HTTP/2: an integer of at most 8 digits and a unit H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn to_request(r: ScoreRequest) -> Request {
    let mut fields: Vec<(String, u64)> = r.fields.into_iter().collect();
    // Map order is unspecified on the wire; the engine's errors then name fields stably.
    fields.sort();
    Request {
        user: UserRequest {
            long: r.long,
            short: r.short,
            fields,
            dense: r.dense,
        },
        candidates: r.candidates,
    }
}

fn to_response(resp: crate::Response) -> ScoreResponse {
    ScoreResponse {
        scores: resp.scores.iter().map(|s| s.unwrap_or(f32::NAN)).collect(),
        top_k: resp
            .top_k
            .iter()
            .map(|t| ScoredItem {
                id: t.id,
                score: t.score,
                position: t.position as u32,
            })
            .collect(),
        missing_candidates: resp.missing_candidates,
        skipped_behaviors: resp.skipped_behaviors as u64,
        interests: resp.interests.map(|x| x.values).unwrap_or_default(),
        model_version: resp.model_version.to_string(),
    }
}

impl Service {
    /// Queues a request and waits for its answer. Used by both protocols.
    pub async fn submit(
        state: &Arc<State>,
        queue: &Queue,
        request: Request,
        mut options: RunOptions,
        protocol: &'static str,
    ) -> Result<Answer, (ErrorKind, String)> {
        if !state.ready.load(std::sync::atomic::Ordering::Acquire) {
            return Err((ErrorKind::Unavailable, "not ready".into()));
        }
        // A deadline already past (its body arrived too late) never takes a queue slot either.
        if options.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err((
                ErrorKind::DeadlineExceeded,
                crate::Error::DeadlineExceeded { stage: "received" }.to_string(),
            ));
        }
        // Sizes first (cheap): a request over a limit never takes a queue slot.
        state
            .engine
            .snapshot()
            .check_limits(&request)
            .map_err(|e| (e.kind(), e.to_string()))?;
        // Dropped unanswered (the client went away), the handler cancels the request's work.
        let token = CancelToken::new();
        options.cancel = Some(token.clone());
        let mut on_drop = CancelOnDrop(Some(token));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            request,
            options,
            arrived: Instant::now(),
            reply,
            protocol,
        };
        match queue.submit(job, state) {
            Ok(()) => {}
            Err(Rejected::Full) => {
                return Err((
                    ErrorKind::LimitExceeded,
                    "the queue is full; retry later".into(),
                ))
            }
            Err(Rejected::Closed) => {
                return Err((ErrorKind::Unavailable, "shutting down".into()));
            }
        }
        let answer = answer.await.map_err(|_| {
            (
                ErrorKind::Internal,
                "the batch this request was in failed".into(),
            )
        });
        on_drop.0 = None;
        answer
    }
}

/// Cancels a request's work when its handler is dropped before the answer came: the client went
/// away (an HTTP/2 reset, e.g. its own deadline; a closed connection). A queued request is then
/// never computed, and one being computed stops at the engine's next check.
struct CancelOnDrop(Option<CancelToken>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take() {
            token.cancel();
        }
    }
}

#[tonic::async_trait]
impl Prerank for Service {
    async fn score(
        &self,
        request: tonic::Request<ScoreRequest>,
    ) -> Result<tonic::Response<ScoreResponse>, Status> {
        let arrived = Instant::now();
        // From the request's headers (stamped by `stamp_headers`) to its decoded message: the
        // body's transfer and decoding.
        let headers_at = request
            .extensions()
            .get::<HeadersAt>()
            .map_or(arrived, |h| h.0);
        let received = arrived.saturating_duration_since(headers_at);
        // The client's deadline counts from when its request began to arrive (its headers), not
        // from when the whole body was in: a slow body spends the client's time too.
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|t| headers_at + t);
        let r = request.into_inner();
        let options = RunOptions {
            top_k: (r.top_k > 0).then_some(r.top_k as usize),
            return_scores: r.return_scores,
            return_interests: r.return_interests,
            deadline,
            cancel: None,
        };
        let candidates = r.candidates.len() as u64;
        let outcome =
            Service::submit(&self.state, &self.queue, to_request(r), options, "grpc").await;
        let m = &self.state.metrics;
        m.request_duration.observe(arrived.elapsed().as_secs_f64());
        let Answer {
            result,
            queued,
            inference,
            counted,
        } = match outcome {
            Ok(answer) => answer,
            Err((kind, msg)) => {
                m.failed("grpc", kind);
                return Err(Status::new(status_code(kind), msg));
            }
        };
        m.queue_duration.observe(queued.as_secs_f64());
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                if !counted {
                    m.failed("grpc", e.kind());
                }
                return Err(Status::new(status_code(e.kind()), e.to_string()));
            }
        };
        m.answered("grpc", "Ok");
        m.inference_duration.observe(inference.as_secs_f64());
        m.candidates.inc_by(candidates);
        m.missing_candidates
            .inc_by(resp.missing_candidates.len() as u64);
        m.skipped_behaviors.inc_by(resp.skipped_behaviors as u64);
        let mut out = tonic::Response::new(to_response(resp));
        // Moved into the trailers by `fix_up`.
        let md = out.metadata_mut();
        for (key, d) in TIMINGS.into_iter().zip([received, queued, inference]) {
            if let Ok(v) = d.as_micros().to_string().parse() {
                md.insert(key, v);
            }
        }
        Ok(out)
    }

    async fn info(
        &self,
        _: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoResponse>, Status> {
        Ok(tonic::Response::new(info(&self.state)))
    }
}

/// `InfoResponse` of the engine being served.
pub fn info(state: &State) -> InfoResponse {
    let e = state.engine.snapshot();
    InfoResponse {
        model_version: e.version().to_string(),
        config_json: e.model().config_json.clone(),
        token_rows: e.tokens().len() as u64,
        candidate_rows: e.candidates().len() as u64,
        device: e.device_report().to_string(),
    }
}

/// The timing entries the handler sets as headers; sent as trailing metadata instead (they are
/// known only once the answer is, and gRPC clients read per-call figures from the trailers).
const TIMINGS: [&str; 3] = [
    "x-receive-time-us",
    "x-queue-time-us",
    "x-inference-time-us",
];

/// Fixes up what tonic's stack answers: SPEC §7's RESOURCE_EXHAUSTED for a message over the size
/// limit (tonic's decoder answers OUT_OF_RANGE (11) before any handler runs; the handlers never
/// answer 11), and the timings moved from the headers into the trailers.
async fn fix_up(resp: axum::response::Response) -> axum::response::Response {
    let (mut parts, body) = resp.into_parts();
    if parts.headers.get("grpc-status").is_some_and(|v| v == "11") {
        parts
            .headers
            .insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    let mut timings = axum::http::HeaderMap::new();
    for key in TIMINGS {
        if let Some(v) = parts.headers.remove(key) {
            timings.insert(key, v);
        }
    }
    if timings.is_empty() {
        return axum::response::Response::from_parts(parts, body);
    }
    let body = axum::body::Body::new(WithTrailers {
        inner: body,
        extra: Some(timings),
    });
    axum::response::Response::from_parts(parts, body)
}

/// A response body whose trailers frame (tonic's `grpc-status`) gains `extra`.
struct WithTrailers {
    inner: axum::body::Body,
    extra: Option<axum::http::HeaderMap>,
}

impl http_body::Body for WithTrailers {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(extra) = this.extra.take() {
                        trailers.extend(extra);
                    }
                    std::task::Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
                }
                Err(frame) => std::task::Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves gRPC on `listener` until `stop` resolves, then drains.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    queue: Queue,
    health: tonic_health::server::HealthReporter,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    max_message_bytes: usize,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    health.set_serving::<PrerankServer<Service>>().await;
    let prerank = PrerankServer::new(Service { state, queue })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX);
    let routes = tonic::service::Routes::new(prerank).add_service(health_service);
    let app = routes
        .into_axum_router()
        .layer(axum::middleware::map_response(fix_up))
        .layer(axum::middleware::from_fn(stamp_headers));
    axum::serve(no_delay(listener), app)
        .with_graceful_shutdown(stop)
        .await
}
