//! The route table.

pub mod audit;
pub mod events;
pub mod jobs;
pub mod openapi;
pub mod portal;
pub mod pull;
pub mod webhooks;

use actix_web::http::{Method, header};
use actix_web::middleware::from_fn;
use actix_web::{
    FromRequest, Handler, HttpResponse, Resource, Responder, ResponseError, Route, web,
};
use utoipa::openapi::path::HttpMethod;

use crate::auth::require_token;
use crate::error::ApiError;
use crate::head_guard::Refusal;

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("Not Found"))
}

/// 405 with the `Allow` header RFC 9110 requires.
fn method_not_allowed(allow: header::HeaderValue) -> HttpResponse {
    let mut resp = ApiError::MethodNotAllowed("Method Not Allowed").error_response();
    resp.headers_mut().insert(header::ALLOW, allow);
    resp
}

/// A resource answering 405 (with `Allow: <allow>`) to other methods.
fn resource(paths: &[&str], allow: header::HeaderValue) -> Resource {
    web::resource(paths.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>()).default_service(
        web::to(move || {
            let allow = allow.clone();
            async move { method_not_allowed(allow) }
        }),
    )
}

/// One operation of the API: a handler and its `#[utoipa::path]`
/// annotation, which says its path, its method and whether it takes a
/// token (`security`). The router and the OpenAPI document are both made
/// from [`operations`].
pub struct Operation {
    pub path: String,
    pub methods: Vec<HttpMethod>,
    pub doc: utoipa::openapi::path::Operation,
    route: Route,
}

impl Operation {
    fn needs_token(&self) -> bool {
        self.doc.security.as_ref().is_some_and(|s| !s.is_empty())
    }
}

/// `handler` with the annotation `P`: the `__path_<handler>` type that
/// `#[utoipa::path]` generates, whose tags utoipa keeps apart from the
/// operation (`__dev::Tags`, what its own `paths(...)` and router macros
/// read).
fn op<P, F, Args>(handler: F) -> Operation
where
    P: utoipa::Path + for<'t> utoipa::__dev::Tags<'t>,
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let methods = P::methods();
    let wanted: Vec<Method> = methods.iter().map(method).collect();
    let mut doc = P::operation();
    let tags = P::tags();
    if !tags.is_empty() {
        doc.tags = Some(tags.into_iter().map(str::to_owned).collect());
    }
    Operation {
        path: P::path(),
        doc,
        route: web::route()
            .guard(actix_web::guard::fn_guard(move |ctx| {
                wanted.contains(&ctx.head().method)
            }))
            .to(handler),
        methods,
    }
}

fn method(m: &HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// Every operation the API has, in the order the router tries them
/// (`/webhooks/stats` before `/webhooks/{webhook_id}`).
pub fn operations() -> Vec<Operation> {
    vec![
        op::<webhooks::__path_create, _, _>(webhooks::create),
        op::<webhooks::__path_list, _, _>(webhooks::list),
        op::<webhooks::__path_stats, _, _>(webhooks::stats),
        op::<webhooks::__path_get, _, _>(webhooks::get),
        op::<webhooks::__path_update, _, _>(webhooks::update),
        op::<webhooks::__path_delete, _, _>(webhooks::delete),
        op::<webhooks::__path_deliveries, _, _>(webhooks::deliveries),
        op::<pull::__path_pull, _, _>(pull::pull),
        op::<jobs::__path_bulk_retry, _, _>(jobs::bulk_retry),
        op::<jobs::__path_recover, _, _>(jobs::recover),
        op::<jobs::__path_replay, _, _>(jobs::replay),
        op::<jobs::__path_list, _, _>(jobs::list),
        op::<jobs::__path_get, _, _>(jobs::get),
        op::<jobs::__path_cancel, _, _>(jobs::cancel),
        op::<jobs::__path_pause, _, _>(jobs::pause),
        op::<jobs::__path_resume, _, _>(jobs::resume),
        op::<webhooks::__path_hourly, _, _>(webhooks::hourly),
        op::<webhooks::__path_retry, _, _>(webhooks::retry),
        op::<webhooks::__path_test, _, _>(webhooks::test),
        op::<webhooks::__path_rotate, _, _>(webhooks::rotate),
        op::<portal::__path_readiness, _, _>(portal::readiness),
        op::<events::__path_types, _, _>(events::types),
        op::<audit::__path_list, _, _>(audit::list),
        op::<audit::__path_get, _, _>(audit::get),
        op::<openapi::__path_serve, _, _>(openapi::serve),
    ]
}

/// The `Allow` header of a resource: its methods in a fixed order.
fn allow(ops: &[Operation]) -> header::HeaderValue {
    const ORDER: [HttpMethod; 8] = [
        HttpMethod::Get,
        HttpMethod::Post,
        HttpMethod::Put,
        HttpMethod::Patch,
        HttpMethod::Delete,
        HttpMethod::Head,
        HttpMethod::Options,
        HttpMethod::Trace,
    ];
    let names: Vec<String> = ORDER
        .iter()
        .filter(|m| ops.iter().any(|o| o.methods.contains(m)))
        .map(|m| method(m).to_string())
        .collect();
    header::HeaderValue::from_str(&names.join(", "))
        .unwrap_or_else(|_| header::HeaderValue::from_static(""))
}

/// The operations grouped by path, each path where it first appears.
fn by_path(ops: Vec<Operation>) -> Vec<(String, Vec<Operation>)> {
    let mut groups: Vec<(String, Vec<Operation>)> = Vec::new();
    for op in ops {
        match groups.iter_mut().find(|(path, _)| *path == op.path) {
            Some((_, group)) => group.push(op),
            None => groups.push((op.path.clone(), vec![op])),
        }
    }
    groups
}

/// Every route (the ops routes are mounted by `telemetry::ops`): the
/// operations under `/webhooks` in one scope behind the token check (its
/// root also answers with a trailing slash), the others each behind the
/// check when their annotation asks for a token, then the portal.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut scope = web::scope("/webhooks").wrap(from_fn(require_token));
    let mut others = Vec::new();
    for (path, ops) in by_path(operations()) {
        let allow = allow(&ops);
        match path.strip_prefix("/webhooks") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                let paths: &[&str] = if rest.is_empty() { &["", "/"] } else { &[rest] };
                let mut r = resource(paths, allow);
                for op in ops {
                    r = r.route(op.route);
                }
                scope = scope.service(r);
            }
            _ => others.push((path, allow, ops)),
        }
    }
    cfg.service(scope.default_service(web::to(not_found)));
    for (path, allow, ops) in others {
        let needs_token = ops.iter().any(Operation::needs_token);
        let mut r = resource(&[&path], allow);
        for op in ops {
            r = r.route(op.route);
        }
        if needs_token {
            cfg.service(r.wrap(from_fn(require_token)));
        } else {
            cfg.service(r);
        }
    }
    let get = || header::HeaderValue::from_static("GET");
    cfg.service(resource(&["/"], get()).route(web::get().to(portal::index)))
        .service(resource(&["/portal/{file}"], get()).route(web::get().to(portal::asset)))
        .service(resource(&["/_refused/{reason}"], get()).route(web::get().to(refused)));
}

/// The answer to a request head the connection guard refused: the guard
/// (`head_guard`) hands actix-http `GET /_refused/{reason}` in its place.
/// Not part of the API; asked directly it answers the same error.
async fn refused(reason: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match Refusal::from_path_segment(&reason) {
        Some(why) => Err(ApiError::Refused(why)),
        None => not_found().await,
    }
}

/// For unmatched paths (`App::default_service`).
pub async fn default_not_found() -> Result<HttpResponse, ApiError> {
    not_found().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_path_its_methods_and_token_rule() {
        let got: Vec<String> = by_path(operations())
            .into_iter()
            .map(|(path, ops)| {
                let token = ops.iter().all(Operation::needs_token);
                assert_eq!(token, ops.iter().any(Operation::needs_token), "{path}");
                let allow = allow(&ops);
                let rule = if token { "token" } else { "open" };
                format!("{path} {} {rule}", allow.to_str().unwrap_or("?"))
            })
            .collect();
        let want = "\
            /webhooks GET, POST token
            /webhooks/stats GET token
            /webhooks/{webhook_id} GET, PATCH, DELETE token
            /webhooks/{webhook_id}/deliveries GET token
            /webhooks/{webhook_id}/pull GET token
            /webhooks/{webhook_id}/deliveries/retry POST token
            /webhooks/{webhook_id}/recover POST token
            /webhooks/{webhook_id}/replay POST token
            /webhooks/{webhook_id}/jobs GET token
            /webhooks/{webhook_id}/jobs/{job_id} GET, DELETE token
            /webhooks/{webhook_id}/jobs/{job_id}/pause POST token
            /webhooks/{webhook_id}/jobs/{job_id}/resume POST token
            /webhooks/{webhook_id}/deliveries/hourly GET token
            /webhooks/{webhook_id}/deliveries/{delivery_id}/retry POST token
            /webhooks/{webhook_id}/test POST token
            /webhooks/{webhook_id}/rotate-secret POST token
            /services/readiness GET token
            /events/types GET open
            /events GET token
            /events/{event_id} GET token
            /openapi.json GET open";
        let want: Vec<&str> = want.lines().map(str::trim).collect();
        assert_eq!(got, want);
    }
}
