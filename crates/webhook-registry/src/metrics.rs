//! HTTP request metrics and traces: a counter by matched route pattern,
//! method and status, a latency histogram by route and method, and a span
//! per request that continues the caller's trace (W3C `traceparent`).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web;
use prometheus_client::encoding::EncodeLabelSet;
use telemetry::metrics::{Counter, Family, Histogram, MetricsRegistry, latency_histogram};
use tracing::Instrument;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

/// The HTTP metrics of the registry.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    /// Creates the metrics and registers them as
    /// `registry_http_requests_total` and
    /// `registry_http_request_duration_seconds`.
    pub fn register(registry: &MetricsRegistry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "registry_http_requests",
            "HTTP requests by matched route, method and status",
            requests.clone(),
        );
        registry.register(
            "registry_http_request_duration_seconds",
            "HTTP request latency by matched route and method",
            latency.clone(),
        );
        Self { requests, latency }
    }

    fn record(&self, route: String, method: String, status: u16, seconds: f64) {
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method: method.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status: status.to_string(),
            })
            .inc();
    }
}

/// Methods are a closed set in the labels, so clients cannot grow them.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware: times and counts every request, and runs it in a server
/// span named after its route (`GET /webhooks/{webhook_id}`). A request
/// that carries a `traceparent` header continues that trace; the handlers'
/// spans and the test deliveries they send are children of this span.
/// Unmatched paths share the route label `unmatched`.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = req.app_data::<web::Data<HttpMetrics>>().cloned();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "http_request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let headers = req.headers();
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let tracestate = headers.get("tracestate").and_then(|v| v.to_str().ok());
        telemetry::trace::set_remote_parent(&span, traceparent, tracestate);
    }
    let started = Instant::now();
    let res = next.call(req).instrument(span.clone()).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(m) = metrics {
        m.record(
            route,
            method.to_owned(),
            status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    res
}
