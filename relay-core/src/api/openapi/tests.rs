//! The document against the router: every route in `api/mod.rs` has an
//! operation, every operation a route, and the document is valid OpenAPI 3.1
//! in the shape tools expect.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use utoipa::OpenApi;

use super::ApiDoc;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The byte index of the `)` closing the `(` at `open`.
fn closing(text: &str, open: usize) -> usize {
    let mut depth = 0usize;
    let mut in_string = false;
    let bytes = text.as_bytes();
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'(' if !in_string => depth += 1,
            b')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced parentheses in the router source");
}

/// Methods named as `get(`, `.post(`, … in a `.route(...)` call.
fn methods_in(call: &str) -> Vec<String> {
    let bytes = call.as_bytes();
    let mut found = Vec::new();
    for m in METHODS {
        let needle = format!("{m}(");
        let mut from = 0;
        while let Some(i) = call[from..].find(&needle) {
            let at = from + i;
            let before = at.checked_sub(1).map(|b| bytes[b]);
            let standalone =
                before.is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b':'));
            if standalone {
                found.push(m.to_string());
            }
            from = at + needle.len();
        }
    }
    found
}

/// `(METHOD, full path)` of every route the router source declares: each
/// `let <name> = Router::new()…;` statement is mounted where
/// `.nest("<prefix>", <name>)` puts it, the final expression at the root.
fn routes_in_source(source: &str) -> BTreeSet<(String, String)> {
    let body_start = source
        .find("pub fn router(")
        .expect("api/mod.rs defines `pub fn router`");
    let body = &source[body_start..];
    let mut prefixes = std::collections::BTreeMap::new();
    let mut from = 0;
    while let Some(i) = body[from..].find(".nest(") {
        let open = from + i + ".nest".len();
        let close = closing(body, open);
        let args = &body[open + 1..close];
        let mut parts = args.splitn(2, ',');
        let prefix = parts
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"')
            .to_string();
        let name = parts.next().unwrap_or("").trim().to_string();
        prefixes.insert(name, prefix);
        from = close;
    }
    let mut routes = BTreeSet::new();
    let mut from = 0;
    while let Some(i) = body[from..].find(".route(") {
        let at = from + i;
        let open = at + ".route".len();
        let close = closing(body, open);
        let call = &body[open + 1..close];
        let path = call
            .split('"')
            .nth(1)
            .expect("a route call starts with its path literal");
        // The statement this call belongs to: the last `let` before it.
        let statement = &body[..at];
        let prefix = match statement.rfind("let ") {
            Some(l) if !statement[l..].contains(';') => {
                let name = statement[l + 4..]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("");
                prefixes
                    .get(name)
                    .unwrap_or_else(|| panic!("router `{name}` is never nested"))
                    .clone()
            }
            _ => String::new(),
        };
        let methods = methods_in(call);
        assert!(!methods.is_empty(), "no method found in .route({call})");
        for m in methods {
            routes.insert((m, format!("{prefix}{path}")));
        }
        from = close;
    }
    routes
}

fn documented() -> BTreeSet<(String, String)> {
    let doc = ApiDoc::openapi();
    let mut out = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("get", item.get.is_some()),
            ("post", item.post.is_some()),
            ("put", item.put.is_some()),
            ("patch", item.patch.is_some()),
            ("delete", item.delete.is_some()),
        ];
        for (m, present) in ops {
            if present {
                out.insert((m.to_string(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn the_route_scanner_reads_nesting_and_methods() {
    let source = r#"
pub fn router(relay: Arc<Relay>) -> Router {
    let api = Router::new()
        .route("/a/{id}", get(x::a_get).delete(x::a_delete))
        .route("/b", post(x::b));
    let agent = Router::new().route("/enroll", post(agent::enroll));
    Router::new()
        .route("/healthz", get(ops::healthz))
        .nest("/api", api)
        .nest("/agent/v1", agent)
}"#;
    let found: Vec<_> = routes_in_source(source).into_iter().collect();
    let expected = [
        ("delete", "/api/a/{id}"),
        ("get", "/api/a/{id}"),
        ("get", "/healthz"),
        ("post", "/agent/v1/enroll"),
        ("post", "/api/b"),
    ]
    .map(|(m, p)| (m.to_string(), p.to_string()));
    assert_eq!(found, expected);
}

/// Fails when a route is added to `api/mod.rs` without a `#[utoipa::path]`
/// listed in `ApiDoc`, or when the document names a route that is gone.
#[test]
fn every_route_is_documented() {
    let routes = routes_in_source(include_str!("../mod.rs"));
    assert!(routes.len() >= 30, "the scanner found only {routes:?}");
    let docs = documented();
    let missing: Vec<_> = routes.difference(&docs).collect();
    assert!(
        missing.is_empty(),
        "routes without an OpenAPI operation (annotate the handler with \
         #[utoipa::path] and list it in ApiDoc, see docs/openapi.md): {missing:?}"
    );
    let stale: Vec<_> = docs.difference(&routes).collect();
    assert!(stale.is_empty(), "operations without a route: {stale:?}");
}

#[test]
fn the_document_is_openapi_3_1_with_shared_errors_and_security() {
    let doc: serde_json::Value =
        serde_json::from_slice(super::document()).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
    assert_eq!(schemes["agent_token"]["scheme"], "bearer");
    for (status, name, _) in super::PROBLEMS {
        let r = &doc["components"]["responses"][name];
        assert!(
            r["content"]["application/problem+json"]["schema"]["$ref"]
                .as_str()
                .is_some_and(|s| s.ends_with("/Problem")),
            "{status} {name}: {r}"
        );
    }
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            operations += 1;
            let responses = op["responses"].as_object().expect("responses");
            let has = |s: &str| responses.contains_key(s);
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{method} {path} has no success response"
            );
            if path.starts_with("/api/") {
                for s in ["401", "429", "503"] {
                    assert!(has(s), "{method} {path} lacks {s}");
                }
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"api_key": []}]),
                    "{method} {path}"
                );
            }
            if op.get("requestBody").is_some() {
                for s in ["400", "413", "415", "422"] {
                    assert!(has(s), "{method} {path} lacks {s}");
                }
            }
            if path.contains('{') {
                assert!(has("404"), "{method} {path} takes an id but lacks 404");
            }
            let pages = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "cursor"));
            if pages {
                assert!(has("400"), "{method} {path} takes a cursor but lacks 400");
            }
        }
    }
    assert!(operations >= 30);
    assert_eq!(
        doc["paths"]["/agent/v1/checkin"]["post"]["security"],
        serde_json::json!([{"agent_token": []}])
    );
}

fn relay() -> (tempfile::TempDir, std::sync::Arc<crate::relay::Relay>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::RelayConfig::default();
    config.store.data_dir = dir.path().to_path_buf();
    let relay =
        crate::relay::Relay::open(config, crate::clock::Clock::system()).expect("the relay opens");
    relay.set_lifecycle(crate::relay::Lifecycle::Ready);
    (dir, relay)
}

async fn admin_key(relay: &crate::relay::Relay) -> String {
    let created = crate::control::bootstrap_admin(
        relay,
        serde_json::from_value(serde_json::json!({"name": "root", "expires_in_days": 30}))
            .expect("a bootstrap request"),
    )
    .await
    .expect("the first admin");
    created["key"]["key"].as_str().expect("the key").to_string()
}

/// Every documented operation reaches a handler of the real router: neither
/// the fallback's "no such route" nor 405.
#[tokio::test]
async fn every_documented_operation_reaches_the_router() {
    let (_dir, relay) = relay();
    let key = admin_key(&relay).await;
    let app = crate::api::router(relay.clone());
    for (method, path) in documented() {
        let concrete: String = path
            .split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => {
                        let prefix = match name {
                            "device_id" => "dev_",
                            "snapshot_id" => "snap_",
                            "exclusion_id" => "exc_",
                            "key_id" => "key_",
                            "user_id" => "usr_",
                            "webhook_id" => "whk_",
                            other => panic!("add an id prefix for {{{other}}}"),
                        };
                        format!("{prefix}01HXYZ8K3M4N5P6Q7R8S9T0VWX")
                    }
                    None => seg.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        let request = Request::builder()
            .method(Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method"))
            .uri(&concrete)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .expect("a request");
        let response = app.clone().oneshot(request).await.expect("an answer");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {concrete}"
        );
        assert!(
            !(status == StatusCode::NOT_FOUND && text.contains("no such route")),
            "{method} {concrete} is documented but not routed"
        );
    }
}

#[tokio::test]
async fn the_document_is_served_to_key_holders_only() {
    let (_dir, relay) = relay();
    let key = admin_key(&relay).await;
    let app = crate::api::router(relay.clone());
    let get = |auth: Option<String>| {
        let mut b = Request::builder().uri("/api/openapi.json");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::empty()).expect("a request")
    };
    let anonymous = app.clone().oneshot(get(None)).await.expect("an answer");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let served = app
        .oneshot(get(Some(format!("Bearer {key}"))))
        .await
        .expect("an answer");
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(
        served.headers()["content-type"],
        "application/json",
        "the document's content type"
    );
    let bytes = served
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    assert!(doc["paths"]["/api/openapi.json"]["get"].is_object());
}
