//! HTTP/JSON (SPEC §7): `POST /v1/score`, `GET /v1/info`, `GET /health/live`,
//! `GET /health/ready`, `GET /metrics`; and the admin listener (loopback by default):
//! `POST /admin/reload`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use super::batcher::Queue;
use super::grpc::Service;
use super::{no_delay, stamp_headers, HeadersAt, ModelFiles, State};
use crate::{ErrorKind, RunOptions};

#[derive(Clone)]
struct Ctx {
    state: Arc<State>,
    queue: Queue,
}

fn http_status(kind: ErrorKind) -> StatusCode {
    StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn score(
    AxState(ctx): AxState<Ctx>,
    Extension(HeadersAt(start)): Extension<HeadersAt>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let m = &ctx.state.metrics;
    let reply = |status: StatusCode, resp: Response| {
        m.request_duration.observe(arrived.elapsed().as_secs_f64());
        m.answered("http", status.as_str());
        resp
    };
    let bad = |msg: String| {
        reply(
            StatusCode::BAD_REQUEST,
            json_error(StatusCode::BAD_REQUEST, &msg),
        )
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad("the body is not UTF-8".into());
    };
    let engine = ctx.state.engine.snapshot();
    let (request, extra) = match crate::json::parse_service_request(text, &engine.model().config) {
        Ok(parsed) => parsed,
        Err(e) => return bad(e.to_string()),
    };
    let deadline = headers
        .get("x-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        // From the headers, as gRPC's (see `grpc::Service::score`).
        .map(|ms| start + std::time::Duration::from_millis(ms));
    let options = RunOptions {
        top_k: extra
            .top_k
            .map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
        return_scores: true,
        return_interests: extra.emit_interests,
        deadline,
        cancel: None,
    };
    let candidates = request.candidates.len() as u64;
    let answer = match Service::submit(&ctx.state, &ctx.queue, request, options, "http").await {
        Ok(a) => a,
        Err((kind, msg)) => {
            let status = if msg.contains("queue is full") {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                http_status(kind)
            };
            return reply(status, json_error(status, &msg));
        }
    };
    m.queue_duration.observe(answer.queued.as_secs_f64());
    let resp = match answer.result {
        Ok(r) => r,
        Err(e) => {
            let status = http_status(e.kind());
            if answer.counted {
                m.request_duration.observe(arrived.elapsed().as_secs_f64());
                return json_error(status, &e.to_string());
            }
            return reply(status, json_error(status, &e.to_string()));
        }
    };
    m.inference_duration.observe(answer.inference.as_secs_f64());
    m.candidates.inc_by(candidates);
    m.missing_candidates
        .inc_by(resp.missing_candidates.len() as u64);
    m.skipped_behaviors.inc_by(resp.skipped_behaviors as u64);
    let body = crate::json::response_json(&resp, extra.emit_interests, extra.top_k.is_some());
    let mut out = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    for (key, d) in [
        (
            "x-receive-time-us",
            arrived.saturating_duration_since(start),
        ),
        ("x-queue-time-us", answer.queued),
        ("x-inference-time-us", answer.inference),
    ] {
        if let Ok(v) = HeaderValue::from_str(&d.as_micros().to_string()) {
            out.headers_mut().insert(key, v);
        }
    }
    reply(StatusCode::OK, out)
}

async fn info(AxState(ctx): AxState<Ctx>) -> Response {
    let i = super::grpc::info(&ctx.state);
    let body = serde_json::json!({
        "model_version": i.model_version,
        "config_json": i.config_json,
        "token_rows": i.token_rows,
        "candidate_rows": i.candidate_rows,
        "device": i.device,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn ready(AxState(ctx): AxState<Ctx>) -> StatusCode {
    if ctx.state.ready.load(Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn metrics(AxState(ctx): AxState<Ctx>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.state.metrics.encode(),
    )
        .into_response()
}

/// An over-large body: axum's limit answers 413; make its body JSON like every other error.
async fn limit_to_json(resp: Response) -> Response {
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is over the size limit",
        );
    }
    resp
}

/// A body announced (`Content-Length`) over the limit is refused before a byte of it is read; a
/// body without a length is cut at the limit by `DefaultBodyLimit`.
async fn announced_length(
    AxState(max): AxState<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        let mut resp = json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is over the size limit",
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    next.run(req).await
}

/// Serves the public HTTP routes until `stop` resolves, then drains.
pub async fn serve_public(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    queue: Queue,
    max_body_bytes: usize,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/score", post(score))
        .route("/v1/info", get(info))
        .route("/health/live", get(|| async { StatusCode::OK }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::map_response(limit_to_json))
        .layer(axum::middleware::from_fn_with_state(
            max_body_bytes,
            announced_length,
        ))
        .layer(axum::middleware::from_fn(stamp_headers))
        .with_state(Ctx { state, queue });
    axum::serve(no_delay(listener), app)
        .with_graceful_shutdown(stop)
        .await
}

/// `{"model": …, "tokens": …, "candidates": …}`, all optional (missing ones keep their path).
#[derive(Deserialize, Default)]
struct ReloadBody {
    model: Option<std::path::PathBuf>,
    tokens: Option<std::path::PathBuf>,
    candidates: Option<std::path::PathBuf>,
}

async fn reload(AxState(state): AxState<Arc<State>>, body: Bytes) -> Response {
    let files = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let b: ReloadBody = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return json_error(StatusCode::BAD_REQUEST, &format!("reload body: {e}"));
            }
        };
        let current = match state.files.lock() {
            Ok(f) => f.clone(),
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        Some(ModelFiles {
            model: b.model.unwrap_or(current.model),
            tokens: b.tokens.unwrap_or(current.tokens),
            candidates: b.candidates.unwrap_or(current.candidates),
        })
    };
    match state.reload(files).await {
        Ok(version) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "model_version": version }).to_string(),
        )
            .into_response(),
        // The files were unusable: nothing changed, the previous model still serves.
        Err(e) => json_error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    }
}

/// Serves the admin routes until `stop` resolves.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/admin/reload", post(reload))
        .with_state(state);
    axum::serve(no_delay(listener), app)
        .with_graceful_shutdown(stop)
        .await
}
