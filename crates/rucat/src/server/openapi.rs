//! The API's contract: an OpenAPI 3.1 document generated from the handlers' own annotations and
//! types, served at `GET /openapi.json` and printed by `rucat openapi`.
//!
//! The document is public (no credential): it describes the API, which is public knowledge, and
//! holds nothing of a deployment's data (no engines, users, versions or settings), so it is the
//! same for every server and needs no configuration to print.

use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{engines, error};
use crate::engine::{Engine, EngineEvent};

/// The name of the security scheme every authenticated operation requires.
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rucat",
        description = "Creates, connects to and manages Spark Connect engines. Errors always have \
            the shape `{\"error\": {\"code\", \"message\"}}`. Every operation but `/healthz`, \
            `/readyz` and `/openapi.json` requires a credential once authentication is \
            configured; another user's engine is 404 on every route, as an unknown id.",
    ),
    paths(
        engines::create,
        engines::list,
        engines::read,
        engines::stop,
        engines::restart,
        engines::delete,
        engines::logs,
        engines::events,
        super::versions,
        super::me,
        super::metrics_page,
        super::healthz,
        super::readyz,
        openapi_json_route,
    ),
    // What the shared wire types hold (`EnginePage`, `Events`, `Logs`): their schemas refer to
    // these by name without registering them.
    components(schemas(error::Body, Engine, EngineEvent, engines::LogSource)),
    modifiers(&Contract),
    tags(
        (name = "engines", description = "Spark Connect engines: create, read, list, stop, restart, delete, logs, events"),
        (name = "service", description = "The server itself: health, readiness, versions, the caller, metrics, this document"),
    ),
)]
struct ApiDoc;

/// The API's OpenAPI 3.1 document.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi())
        .unwrap_or_else(|_| unreachable!("the OpenAPI document is plain JSON data"));
    link(&mut document);
    document
}

/// The API's OpenAPI 3.1 document as JSON (what `GET /openapi.json` serves).
pub fn openapi_json() -> String {
    serde_json::to_string_pretty(&document())
        .unwrap_or_else(|_| unreachable!("the OpenAPI document is plain JSON data"))
}

/// This document. Public: it describes the API and holds no deployment's data.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenApi",
    tag = "service",
    responses(
        (status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object),
    ),
)]
pub(super) async fn openapi_json_route() -> Response {
    // The same for the process's whole life: made once.
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let mut response = DOCUMENT.get_or_init(openapi_json).as_str().into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// What annotations do not say by themselves: the security scheme, the answers every
/// authenticated operation may give, and the links between the engine operations.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`rucat_…`, see `rucat token create`) or an OIDC JWT from \
                         the configured issuer, as `Authorization: Bearer …`.",
                    ))
                    .build(),
            ),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                if operation.security.is_some() {
                    authenticated(operation);
                }
            }
        }
    }
}

fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Error")))
            .build(),
    )
}

/// The answers of every authenticated operation: 401 without an accepted credential, 503 when
/// the credential cannot be checked or the store cannot answer.
fn authenticated(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    responses.entry("401".into()).or_insert_with(|| {
        error_response("No credential, or one that is not accepted")
            .header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::Type::String),
                    )
                    .description(Some("The Bearer challenge (RFC 6750)"))
                    .build(),
            )
            .build()
            .into()
    });
    responses.entry("503".into()).or_insert_with(|| {
        error_response(
            "The store cannot answer, or the credential cannot be checked now (an OIDC issuer \
             out of reach); try again",
        )
        .build()
        .into()
    });
}

/// Links for the stateful flow create → get → stop → restart → delete (and logs, events): the
/// id comes from the create's answer, then from the path of the request that led there.
/// Written into the JSON, as utoipa 5 spells a link's `operationId` `operation_id`.
fn link(document: &mut serde_json::Value) {
    const TO: [(&str, &str); 6] = [
        ("GetEngine", "getEngine"),
        ("StopEngine", "stopEngine"),
        ("RestartEngine", "restartEngine"),
        ("DeleteEngine", "deleteEngine"),
        ("GetEngineLogs", "getEngineLogs"),
        ("GetEngineEvents", "getEngineEvents"),
    ];
    const FROM: [(&str, &str, &str, &str); 6] = [
        ("/engines", "post", "201", "$response.body#/id"),
        ("/engines/{id}", "get", "200", "$request.path.id"),
        ("/engines/{id}/stop", "post", "202", "$request.path.id"),
        ("/engines/{id}/restart", "post", "202", "$request.path.id"),
        ("/engines/{id}/logs", "get", "200", "$request.path.id"),
        ("/engines/{id}/events", "get", "200", "$request.path.id"),
    ];
    for (path, method, status, id) in FROM {
        let Some(response) = document
            .pointer_mut(&format!(
                "/paths/{}/{method}/responses/{status}",
                path.replace('/', "~1")
            ))
            .and_then(serde_json::Value::as_object_mut)
        else {
            continue;
        };
        let links: serde_json::Map<_, _> = TO
            .iter()
            .map(|(name, operation)| {
                (
                    (*name).to_owned(),
                    json!({"operationId": operation, "parameters": {"id": id}}),
                )
            })
            .collect();
        response.insert("links".into(), links.into());
    }
}
