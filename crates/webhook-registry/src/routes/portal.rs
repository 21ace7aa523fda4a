//! The operator portal: plain HTML, CSS and JavaScript modules embedded in
//! the binary (no build step, nothing from outside the repository), served
//! at `/` and `/portal/<file>` under a strict Content-Security-Policy; and
//! `GET /services/readiness`, which asks the gateway and the delivery
//! worker for their `/readyz` at the URLs the registry was configured with
//! (never a URL from the request), for the portal's overview.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::Value;
use tracing::instrument;
use utoipa::ToSchema;

use crate::config::Config;
use crate::error::{ApiError, ErrorOut};

/// Every file the portal is made of: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "portal.css",
        "text/css; charset=utf-8",
        include_str!("../../portal/portal.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../portal/app.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        include_str!("../../portal/ui.js"),
    ),
    (
        "webhooks.js",
        "text/javascript; charset=utf-8",
        include_str!("../../portal/webhooks.js"),
    ),
    (
        "deliveries.js",
        "text/javascript; charset=utf-8",
        include_str!("../../portal/deliveries.js"),
    ),
    (
        "jobs.js",
        "text/javascript; charset=utf-8",
        include_str!("../../portal/jobs.js"),
    ),
    (
        "events.js",
        "text/javascript; charset=utf-8",
        include_str!("../../portal/events.js"),
    ),
    (
        "audit.js",
        "text/javascript; charset=utf-8",
        include_str!("../../portal/audit.js"),
    ),
    (
        "overview.js",
        "text/javascript; charset=utf-8",
        include_str!("../../portal/overview.js"),
    ),
    // The live view of the gateway's console, the same file
    // (docs/webhook-registry.md, "Portal").
    (
        "live.js",
        "text/javascript; charset=utf-8",
        proto_events::LIVE_JS,
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../portal/icon.svg"),
    ),
];

const INDEX_HTML: &str = include_str!("../../portal/index.html");

/// Total bytes of the portal's files (docs/webhook-registry.md, "Portal").
pub fn total_bytes() -> usize {
    INDEX_HTML.len() + ASSETS.iter().map(|(_, _, body)| body.len()).sum::<usize>()
}

/// The rendered page, its CSP and the readiness targets, built once at start.
pub struct Portal {
    index: String,
    csp: String,
    targets: Vec<(&'static str, String)>,
    client: reqwest::Client,
}

/// Escapes text for an HTML attribute value in double quotes.
fn attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Portal {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let gateway = url::Url::parse(&config.gateway_url)?;
        // The origin only: a CSP source cannot hold every character a path may.
        let gateway_origin = gateway.origin().ascii_serialization();
        // The live view reads the gateway's /ws, or its /sse beside it over
        // HTTP(S) on the same host and port.
        let mut sse = gateway.clone();
        let scheme = if gateway.scheme() == "wss" {
            "https"
        } else {
            "http"
        };
        let sse_origin = match sse.set_scheme(scheme) {
            Ok(()) => format!(" {}", sse.origin().ascii_serialization()),
            Err(()) => String::new(),
        };
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self' {gateway_origin}{sse_origin}; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        );
        let index = INDEX_HTML.replace("{{GATEWAY_URL}}", &attr(gateway.as_str()));
        let mut targets = Vec::new();
        if let Some(u) = config.gateway_ready_url() {
            targets.push(("gateway", u.to_string()));
        }
        targets.push(("delivery-worker", config.worker_ready_url.clone()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(3))
            .build()?;
        Ok(Self {
            index,
            csp,
            targets,
            client,
        })
    }

    fn page(
        &self,
        content_type: &'static str,
        body: impl actix_web::body::MessageBody + 'static,
    ) -> HttpResponse {
        HttpResponse::Ok()
            .content_type(content_type)
            .insert_header((header::CONTENT_SECURITY_POLICY, self.csp.as_str()))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(body)
    }
}

/// `GET /`: the portal's page.
pub async fn index(portal: web::Data<Portal>) -> HttpResponse {
    portal.page("text/html; charset=utf-8", portal.index.clone())
}

/// `GET /portal/{file}`: one of the portal's files.
pub async fn asset(
    portal: web::Data<Portal>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name.as_str())
        .ok_or(ApiError::NotFound("Not Found"))?;
    Ok(portal.page(content_type, *body))
}

/// One service's readiness as the registry saw it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceReadiness {
    /// `gateway` or `delivery-worker`.
    pub name: String,
    /// The configured readiness URL that was asked.
    pub url: String,
    /// `true` when it answered 200.
    pub ready: bool,
    /// The HTTP status it answered, `null` when it did not answer.
    pub status_code: Option<u16>,
    /// Its `checks` object (`{"nats": "ok", …}`), when it sent one.
    #[schema(value_type = Option<Object>)]
    pub checks: Option<Value>,
    /// Why it could not be asked (connection refused, timeout, …).
    pub error: Option<String>,
}

/// `GET /services/readiness`
#[derive(Debug, Serialize, ToSchema)]
pub struct ServicesReadiness {
    pub services: Vec<ServiceReadiness>,
}

/// Largest readiness answer read (a `/readyz` body is a few hundred bytes).
const READY_BODY_MAX: usize = 16 * 1024;

async fn probe(client: &reqwest::Client, name: &str, url: &str) -> ServiceReadiness {
    let mut out = ServiceReadiness {
        name: name.to_owned(),
        url: url.to_owned(),
        ready: false,
        status_code: None,
        checks: None,
        error: None,
    };
    let res = match client.get(url).send().await {
        Ok(res) => res,
        Err(e) => {
            out.error = Some(if e.is_timeout() {
                "no answer within 3s".to_owned()
            } else if e.is_connect() {
                "cannot connect".to_owned()
            } else {
                "request failed".to_owned()
            });
            return out;
        }
    };
    out.status_code = Some(res.status().as_u16());
    out.ready = res.status() == reqwest::StatusCode::OK;
    let mut res = res;
    let mut body = Vec::new();
    while let Ok(Some(c)) = res.chunk().await {
        if body.len() + c.len() > READY_BODY_MAX {
            break;
        }
        body.extend_from_slice(&c);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        out.checks = v.get("checks").filter(|c| c.is_object()).cloned();
    }
    out
}

/// The readiness of the gateway and the delivery worker, asked by the
/// registry at its configured URLs (`REGISTRY_GATEWAY_READY_URL` or derived
/// from `REGISTRY_GATEWAY_URL`, `REGISTRY_WORKER_READY_URL`), for browsers
/// that cannot reach them. Always 200: each entry says how its service did.
#[utoipa::path(
    get, path = "/services/readiness", tag = "meta",
    responses(
        (status = 200, description = "Each service's readiness", body = ServicesReadiness),
        (status = 401, description = "Missing or invalid token", body = ErrorOut),
        (status = 503, description = "The registry's database is not ready", body = ErrorOut),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
#[instrument(skip_all)]
pub async fn readiness(portal: web::Data<Portal>) -> HttpResponse {
    let services = futures::future::join_all(
        portal
            .targets
            .iter()
            .map(|(name, url)| probe(&portal.client, name, url)),
    )
    .await;
    HttpResponse::Ok().json(ServicesReadiness { services })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_page_names_only_its_own_files() {
        let portal = Portal::new(&Config::for_tests("postgres://h/db", "")).unwrap();
        assert!(portal.index.contains("content=\"ws://127.0.0.1:8081/ws\""));
        assert!(
            portal
                .csp
                .contains("connect-src 'self' ws://127.0.0.1:8081 http://127.0.0.1:8081;")
        );
        for (name, _, body) in ASSETS {
            for line in body.lines() {
                if let Some(rest) = line.trim().strip_prefix("import ")
                    && let Some(from) = rest.split(" from ").nth(1)
                {
                    let target = from.trim_matches(|c| c == '"' || c == ';' || c == ' ');
                    let file = target
                        .trim_start_matches("./")
                        .trim_start_matches("/portal/");
                    assert!(
                        ASSETS.iter().any(|(n, _, _)| *n == file),
                        "{name} imports {target}, which is not served"
                    );
                }
            }
            for external in [
                "from \"http",
                "url(http",
                "src=\"http",
                "href=\"http",
                "@import",
            ] {
                assert!(
                    !body.contains(external),
                    "{name} loads something from outside"
                );
            }
        }
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("src=\"http") && !INDEX_HTML.contains("href=\"http"));
    }

    #[test]
    fn the_portal_stays_small() {
        // 64 KiB until the subscription editor (patterns, filter, headers,
        // auth, signing scheme) took it to 68 KB; 80 KiB until the delivery
        // policy editor and the audit pages took it to 83 KB.
        assert!(total_bytes() < 96 * 1024, "{} bytes", total_bytes());
    }

    #[test]
    fn an_odd_gateway_url_cannot_break_out_of_the_attribute() {
        let mut c = Config::for_tests("postgres://h/db", "");
        c.gateway_url = "ws://127.0.0.1:8081/ws?a=\"><script>".to_owned();
        let portal = Portal::new(&c).unwrap();
        assert!(!portal.index.contains("\"><script>"));
    }
}
