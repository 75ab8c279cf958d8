//! Watches: a stream of newline-delimited `{"type": ..., "object": ...}`
//! events, replayed from the history and then live, with periodic BOOKMARKs,
//! ended by `timeoutSeconds`, by the client going away, or by the server
//! stopping. A resourceVersion older than the history gets one ERROR event
//! carrying a 410 Status, which makes kube's watcher (and client-go's
//! reflector) list again.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::resources::Resource;
use super::status::ApiError;
use super::store::{Change, ChangeKind, Store};
use super::table::{self, Printer};
use super::verbs::Selection;

/// What a watch request asked for.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub resource: Arc<Resource>,
    pub version: String,
    pub selection: Selection,
    /// `None`, or `"0"`: start with ADDED events for what exists now.
    pub from: Option<u64>,
    pub timeout: Duration,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    /// `sendInitialEvents=true`: a bookmark marks the end of the initial ADDED events.
    pub send_initial_events: bool,
    /// Set when kubectl asked for Tables: each event then carries a one-row Table.
    pub printer: Option<Printer>,
    /// Set when the client asked for `PartialObjectMetadata`.
    pub metadata_only: bool,
}

impl WatchSpec {
    fn api_version(&self) -> String {
        self.resource.api_version(&self.version)
    }

    /// The event a change means to this watch, if any: selectors turn a
    /// change into ADDED or DELETED when an object starts or stops matching.
    fn translate(&self, change: &Change) -> Option<Value> {
        if change.resource.0 != self.resource.group || change.resource.1 != self.resource.plural {
            return None;
        }
        if let Some(namespace) = &self.selection.namespace
            && change.namespace != *namespace
        {
            return None;
        }
        let now = self.selection.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.selection.matches(p));
        let kind = match change.kind {
            ChangeKind::Added if now => ChangeKind::Added,
            ChangeKind::Modified if now && before => ChangeKind::Modified,
            ChangeKind::Modified if now => ChangeKind::Added,
            ChangeKind::Modified if before => ChangeKind::Deleted,
            ChangeKind::Deleted if before || now => ChangeKind::Deleted,
            _ => return None,
        };
        Some(self.event(kind.as_str(), change.object.clone()))
    }

    fn event(&self, kind: &str, mut object: Value) -> Value {
        if let Some(fields) = object.as_object_mut() {
            fields.insert("apiVersion".into(), json!(self.api_version()));
        }
        json!({"type": kind, "object": object})
    }

    /// The event as sent: with a Table for its object when one was asked
    /// for, column definitions in the first only.
    fn render(&self, mut event: Value, first: &mut bool) -> Value {
        if let Some(printer) = &self.printer
            && matches!(event["type"].as_str(), Some("ADDED" | "MODIFIED" | "DELETED"))
        {
            let object = event["object"].take();
            let rv = object.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_owned);
            event["object"] = printer.table(&[object], rv, *first);
            *first = false;
        } else if self.metadata_only && matches!(event["type"].as_str(), Some("ADDED" | "MODIFIED" | "DELETED")) {
            event["object"] = table::partial_metadata(&event["object"]);
        }
        event
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({
            "type": "BOOKMARK",
            "object": {"kind": self.resource.kind, "apiVersion": self.api_version(), "metadata": metadata},
        })
    }
}

/// A watch, opened with the store locked: what to send first, and where to
/// continue from.
pub struct Opened {
    first: Vec<Value>,
    position: u64,
    changes: Option<broadcast::Receiver<Arc<Change>>>,
}

/// Opens a watch. Must run with the store locked, so that nothing happens
/// between the replay and the subscription.
pub fn open(store: &Store, spec: &WatchSpec) -> Opened {
    match spec.from {
        None => {
            let key = (spec.resource.group.clone(), spec.resource.plural.clone());
            let mut first: Vec<Value> = store
                .list(&key, spec.selection.namespace.as_deref())
                .filter(|o| spec.selection.matches(o))
                .map(|o| spec.event("ADDED", o.clone()))
                .collect();
            if spec.send_initial_events {
                first.push(spec.bookmark(store.rv(), true));
            }
            let changes = store.watch_from(store.rv()).map(|(_, receiver)| receiver);
            Opened { first, position: store.rv(), changes }
        }
        Some(rv) => match store.watch_from(rv) {
            Some((replay, receiver)) => {
                let position = replay.last().map_or(rv, |c| c.rv);
                let first = replay.iter().filter_map(|c| spec.translate(c)).collect();
                Opened { first, position, changes: Some(receiver) }
            }
            None => {
                let gone = ApiError::expired(format!("too old resource version: {rv} ({})", store.compacted()));
                Opened {
                    first: vec![json!({"type": "ERROR", "object": gone.to_status()})],
                    position: rv,
                    changes: None,
                }
            }
        },
    }
}

fn line(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// The response body of a watch: a task feeds it until the watch ends.
pub fn stream(
    opened: Opened,
    spec: WatchSpec,
    mut shutdown: watch::Receiver<bool>,
    mut compactions: watch::Receiver<u64>,
) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut first = true;
        for event in opened.first {
            if tx.send(line(&spec.render(event, &mut first))).await.is_err() {
                return;
            }
        }
        let Some(mut changes) = opened.changes else { return };
        let mut position = opened.position;
        let deadline = tokio::time::sleep(spec.timeout);
        tokio::pin!(deadline);
        let interval = spec.bookmark_interval.max(Duration::from_millis(10));
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        loop {
            let stopping = async {
                // NB: dropping the receiver's guard here keeps the task `Send`.
                let _ = shutdown.wait_for(|stopped| *stopped).await;
            };
            let event = tokio::select! {
                () = &mut deadline => break,
                () = stopping => break,
                () = tx.closed() => break,
                Ok(()) = compactions.changed() => {
                    let gone = ApiError::expired(format!("too old resource version: {position}: the history was compacted"));
                    json!({"type": "ERROR", "object": gone.to_status()})
                }
                _ = ticks.tick(), if spec.bookmarks => spec.bookmark(position, false),
                received = changes.recv() => match received {
                    Ok(change) => {
                        position = change.rv;
                        match spec.translate(&change) {
                            Some(event) => event,
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::expired(format!(
                            "the watch fell behind after resource version {position}; list again"
                        ));
                        json!({"type": "ERROR", "object": gone.to_status()})
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            let last = event["type"] == "ERROR";
            if tx.send(line(&spec.render(event, &mut first))).await.is_err() || last {
                break;
            }
        }
    });
    let lines =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|bytes| (Ok::<_, Infallible>(bytes), rx)) },
        );
    Body::from_stream(lines)
}
