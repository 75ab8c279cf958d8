//! Routes: discovery, and every resource path
//! (`/api/v1/namespaces/{ns}/{plural}/{name}/status`,
//! `/apis/{group}/{version}/{plural}`, ...) mapped to a verb.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::access::{self, Access, Accesses};
use super::discovery;
use super::patch::{self, PatchType};
use super::protobuf;
use super::resources::Resource;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::Store;
use super::table::{self, IncludeObject, Printer};
use super::verbs::{self, DeleteOptions, FieldValidation, Selection, Target, WriteOptions};
use super::watch::{self as watches, WatchSpec};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// What every request shares.
pub struct Shared {
    store: Mutex<Store>,
    bookmark_interval: Duration,
    stopping: watch::Receiver<bool>,
    /// Counts compactions; each one ends every open watch with a 410.
    compactions: watch::Sender<u64>,
    pub accesses: Accesses,
}

impl Shared {
    pub fn new(store: Store, bookmark_interval: Duration, stopping: watch::Receiver<bool>) -> Shared {
        Shared {
            store: Mutex::new(store),
            bookmark_interval,
            stopping,
            compactions: watch::Sender::new(0),
            accesses: Accesses::default(),
        }
    }

    /// Drops the history and ends every open watch with a 410 Gone, as a
    /// real server does when etcd compacts: watchers must list again.
    pub fn compact(&self) {
        self.lock().compact();
        self.compactions.send_modify(|n| *n += 1);
    }

    /// NB: a panic while the lock was held leaves the store as the panicking
    /// request left it; the server keeps serving rather than fail every
    /// later request.
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The real server's limit on a request body.
const BODY_LIMIT: usize = 3 * 1024 * 1024;

/// How long a watch lasts when the client gives no `timeoutSeconds` (the
/// real server picks 30 to 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(shared)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = match Query::<HashMap<String, String>>::try_from_uri(&uri) {
        Ok(Query(query)) => query,
        Err(e) => return ApiError::bad_request(format!("invalid query: {e}")).into_response(),
    };
    let request = Request { method: &method, uri: &uri, headers: &headers, query: &query, body: &body };
    let response = dispatch(&shared, &request).unwrap_or_else(IntoResponse::into_response);
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "request");
    response
}

struct Request<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
    body: &'a Bytes,
}

impl Request<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The body of a create, update or delete: JSON, or YAML.
    ///
    /// NB: kubectl's imperative `create` sends built-in kinds as protobuf;
    /// the few it is used for here are decoded.
    fn object_body(&self) -> Result<Value> {
        let media = self.content_type().split(';').next().unwrap_or_default().trim();
        match media {
            "" | "application/json" | "*/*" => serde_json::from_slice(self.body).map_err(|e| {
                ApiError::bad_request(format!("the body of the request could not be decoded as JSON: {e}"))
            }),
            "application/yaml" => {
                let text = std::str::from_utf8(self.body)
                    .map_err(|_| ApiError::bad_request("the body of the request is not UTF-8"))?;
                patch::yaml(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
            }
            "application/vnd.kubernetes.protobuf" => protobuf::decode(self.body).map_err(|e| {
                tracing::debug!(problem = %e, "protobuf body refused");
                ApiError::unsupported_media_type(self.content_type(), &["application/json", "application/yaml"])
            }),
            _ => Err(ApiError::unsupported_media_type(self.content_type(), &["application/json", "application/yaml"])),
        }
    }

    fn accept(&self) -> &str {
        self.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    fn metadata_only(&self) -> bool {
        table::metadata_only(self.accept())
    }

    /// A Table printer, when the client asked for Tables and the resource has
    /// printer columns.
    fn printer(&self, target: &Target) -> Option<Printer> {
        if !table::wanted(self.accept()) {
            return None;
        }
        let version = target.resource.version(&target.version)?;
        Printer::new(&version.printer_columns, IncludeObject::parse(self.param("includeObject")))
    }

    fn write_options(&self) -> Result<WriteOptions> {
        let validation = match self.param("fieldValidation") {
            None | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", not {other:?}"
                )));
            }
        };
        // Like the real server: the User-Agent up to its first '/'.
        let agent = self.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let prefix = agent.split('/').next().unwrap_or_default().trim();
        let from_agent = if prefix.is_empty() { "unknown".to_owned() } else { prefix.chars().take(128).collect() };
        Ok(WriteOptions {
            manager: self.param("fieldManager").map_or(from_agent, str::to_owned),
            manager_given: self.param("fieldManager").is_some(),
            force: self.flag("force"),
            dry_run: self.param("dryRun").is_some(),
            validation,
        })
    }

    fn selection(&self, namespace: Option<&str>) -> Result<Selection> {
        let labels = match self.param("labelSelector") {
            Some(text) => LabelSelector::parse(text).map_err(ApiError::bad_request)?,
            None => LabelSelector::default(),
        };
        let fields = match self.param("fieldSelector") {
            Some(text) => FieldSelector::parse(text).map_err(ApiError::bad_request)?,
            None => FieldSelector::default(),
        };
        Ok(Selection { namespace: namespace.map(str::to_owned), labels, fields })
    }
}

fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let mut response = (code, axum::Json(value)).into_response();
    for warning in warnings {
        let text = format!("299 - {}", Value::String(warning.clone()));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn ok(value: &Value) -> Result<Response> {
    Ok(json_response(StatusCode::OK, value, &[]))
}

fn dispatch(shared: &Shared, request: &Request<'_>) -> Result<Response> {
    let path = request.uri.path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [] => ok(&json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]})),
        ["version"] => ok(&discovery::version()),
        ["healthz" | "livez" | "readyz", ..] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => {
            let host = request.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
            ok(&discovery::core_versions(host))
        }
        ["apis"] => ok(&discovery::groups(&shared.lock().registry)),
        ["apis", group] => {
            discovery::group(&shared.lock().registry, group).map_or_else(|| Err(ApiError::no_route(path)), |d| ok(&d))
        }
        ["api", version, rest @ ..] => resource_request(shared, request, "", version, rest),
        ["apis", group, version, rest @ ..] => resource_request(shared, request, group, version, rest),
        _ => Err(ApiError::no_route(path)),
    }
}

/// What a resource path names.
struct Address<'a> {
    resource: Arc<Resource>,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    status: bool,
}

fn address<'a>(store: &Store, path: &str, group: &str, version: &str, rest: &[&'a str]) -> Result<Address<'a>> {
    let missing = || ApiError::no_route(path);
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && store.registry.lookup(group, version, rest[2]).is_some_and(|r| r.namespaced);
    let (namespace, rest) = if namespaced_path { (Some(rest[1]), &rest[2..]) } else { (None, rest) };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, subresource] => (*plural, Some(*name), Some(*subresource)),
        _ => return Err(missing()),
    };
    let resource = store.registry.lookup(group, version, plural).cloned().ok_or_else(missing)?;
    if name.is_some() && resource.namespaced != namespace.is_some() {
        return Err(missing());
    }
    let status = match subresource {
        None => false,
        Some("status") if resource.has_status(version) => true,
        Some(_) => return Err(missing()),
    };
    Ok(Address { resource, namespace, name, status })
}

fn resource_request(
    shared: &Shared,
    request: &Request<'_>,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response> {
    let path = request.uri.path();
    let mut store = shared.lock();
    if rest.is_empty() {
        return match discovery::resources(&store.registry, group, version) {
            Some(document) => ok(&document),
            None => Err(ApiError::no_route(path)),
        };
    }
    let address = address(&store, path, group, version, rest)?;
    let resource = match address.status {
        true => format!("{}/status", address.resource.plural),
        false => address.resource.plural.clone(),
    };
    shared.accesses.record(Access {
        user: access::user(request.headers),
        verb: access::verb(request.method, address.name.is_some(), request.flag("watch")),
        group: group.to_owned(),
        resource,
        namespace: address.namespace.map(str::to_owned),
    });
    let target = Target {
        resource: address.resource.clone(),
        version: version.to_owned(),
        namespace: address.namespace.unwrap_or_default().to_owned(),
        name: address.name.unwrap_or_default().to_owned(),
        status: address.status,
    };
    let method = request.method;
    match (method, address.name) {
        (&Method::GET, Some(_)) => {
            let object = verbs::get(&store, &target)?;
            match request.printer(&target) {
                Some(printer) => ok(&printer.table(&[object], None, true)),
                None if request.metadata_only() => ok(&table::partial_metadata(&object)),
                None => ok(&object),
            }
        }
        (&Method::GET, None) if request.flag("watch") => {
            let spec = watch_spec(shared, request, &target, address.namespace)?;
            let opened = watches::open(&store, &spec);
            drop(store);
            let body = watches::stream(opened, spec, shared.stopping.clone(), shared.compactions.subscribe());
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .map_err(|e| ApiError::internal(format!("building the watch response: {e}")))
        }
        (&Method::GET, None) => {
            if request.param("resourceVersionMatch") == Some("Exact")
                && request.param("resourceVersion") != Some(store.rv().to_string().as_str())
            {
                return Err(ApiError::expired(format!(
                    "too old resource version: {} ({}); only the latest state is kept",
                    request.param("resourceVersion").unwrap_or_default(),
                    store.rv()
                )));
            }
            let selection = request.selection(address.namespace)?;
            let limit = match request.param("limit") {
                Some(text) => Some(text.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!("limit must be a non-negative integer, not {text:?}"))
                })?),
                None => None,
            };
            let from = request.param("continue").map(|token| verbs::Continue::parse(token, &store)).transpose()?;
            let list = verbs::list(&store, &target.resource, version, &selection, limit, from);
            match request.printer(&target) {
                Some(printer) => {
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    ok(&printer.table(&items, Some(store.rv().to_string()), true))
                }
                None if request.metadata_only() => {
                    let items: Vec<Value> =
                        list["items"].as_array().into_iter().flatten().map(table::partial_metadata).collect();
                    ok(&json!({
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": list["metadata"],
                        "items": items,
                    }))
                }
                None => ok(&list),
            }
        }
        (&Method::POST, None) if !address.status => {
            let written = verbs::create(&mut store, &target, request.object_body()?, &request.write_options()?)?;
            Ok(json_response(StatusCode::CREATED, &written.object, &written.warnings))
        }
        (&Method::PUT, Some(_)) => {
            let written = verbs::update(&mut store, &target, request.object_body()?, &request.write_options()?)?;
            Ok(json_response(StatusCode::OK, &written.object, &written.warnings))
        }
        (&Method::PATCH, Some(_)) => {
            let kind = PatchType::from_content_type(request.content_type())
                .ok_or_else(|| ApiError::unsupported_media_type(request.content_type(), &PatchType::MEDIA_TYPES))?;
            let written = verbs::patch(&mut store, &target, kind, request.body, &request.write_options()?)?;
            let code = if written.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(json_response(code, &written.object, &written.warnings))
        }
        (&Method::DELETE, name) if !address.status => {
            // NB: kubectl may send DeleteOptions as protobuf; only
            // preconditions and dryRun are read from them, so they are
            // ignored then rather than refused.
            let body = match request.object_body() {
                Ok(body) => body,
                Err(_) if request.body.is_empty() || request.content_type().contains("protobuf") => json!({}),
                Err(e) => return Err(e),
            };
            let options = DeleteOptions::from_body(&body, request.param("dryRun").is_some());
            match name {
                Some(_) => ok(&verbs::delete(&mut store, &target, &options)?),
                None => {
                    let selection = request.selection(address.namespace)?;
                    ok(&verbs::delete_collection(&mut store, &target.resource, version, &selection, &options))
                }
            }
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {path})"
        ))),
    }
}

fn watch_spec(shared: &Shared, request: &Request<'_>, target: &Target, namespace: Option<&str>) -> Result<WatchSpec> {
    let from = match request.param("resourceVersion") {
        None | Some("0") => None,
        Some(text) => Some(
            text.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {text:?}")))?,
        ),
    };
    let timeout = match request.param("timeoutSeconds") {
        Some(text) => Duration::from_secs(
            text.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {text:?}")))?,
        ),
        None => DEFAULT_WATCH_TIMEOUT,
    };
    Ok(WatchSpec {
        resource: target.resource.clone(),
        version: target.version.clone(),
        selection: request.selection(namespace)?,
        from,
        timeout,
        bookmarks: request.flag("allowWatchBookmarks"),
        bookmark_interval: shared.bookmark_interval,
        send_initial_events: request.flag("sendInitialEvents"),
        printer: request.printer(target),
        metadata_only: request.metadata_only(),
    })
}
