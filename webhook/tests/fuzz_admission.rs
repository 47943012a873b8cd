//! Bad input to `POST /mutate`, through the real router: arbitrary bytes, arbitrary JSON, and
//! mutations of the captured AdmissionReviews in `tests/fixtures/`.
//!
//! Whatever comes in, the handler must not panic and must answer either 200 with an
//! `admission.k8s.io/v1` AdmissionReview that allows the change and carries the request's uid,
//! or 400/413/415 with `{"error": "<non-empty text>"}`. Never 500: the apiserver would then
//! apply the webhook's failurePolicy to a request that was merely odd.
//!
//! Case counts: `PROPTEST_CASES` (proptest's own variable) when set, else 256 ([`mesh_core::fixtures::proptest_config`]),
//! which keeps this file to a few seconds in a debug build.

use mesh_testenv::json_doc::{Splices, Syntax, TreeEdit, damage_byte, pointers, set, tree_edit};
use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use mesh_core::{
    fake_apiserver,
    fixtures::body_bytes,
    labels::SyncRule,
    remote::{Remote, Remotes},
};
use mesh_webhook::{
    http::{AppState, BODY_LIMIT, router},
    shared_state::SharedState,
};
use proptest::{prelude::*, sample::Index, test_runner::TestCaseError};
use serde_json::{Value, json};
use tower::ServiceExt;

const FIXTURES: [(&str, &str); 4] = [
    (
        "namespace-create",
        include_str!("fixtures/namespace-create.json"),
    ),
    (
        "namespace-update",
        include_str!("fixtures/namespace-update.json"),
    ),
    (
        "namespace-update-dry-run",
        include_str!("fixtures/namespace-update-dry-run.json"),
    ),
    (
        "namespace-delete",
        include_str!("fixtures/namespace-delete.json"),
    ),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A remote apiserver that answers every request with `status` and a Status body: 404 makes a
/// push end as "namespace missing", 500 as a failure whose message has a line break, so the
/// warning paths of the response are exercised too.
fn remote(name: &str, status: StatusCode) -> Remote {
    let service = tower::service_fn(move |_request: Request<kube::client::Body>| async move {
        let (status, body) = fake_apiserver::status(status, "Whatever", "first line\nsecond line");
        Ok::<_, Infallible>(fake_apiserver::json_response(status, &body))
    });
    Remote::new(name, kube::Client::new(service, "default"))
}

fn state() -> AppState {
    let remotes = Remotes::default();
    remotes.insert(remote("east", StatusCode::NOT_FOUND));
    remotes.insert(remote("west", StatusCode::INTERNAL_SERVER_ERROR));
    AppState::new(
        SharedState::new(Arc::new(SyncRule::default()), remotes),
        Duration::from_millis(500),
    )
}

#[derive(serde::Deserialize)]
struct UidProbe {
    request: Option<UidRequest>,
}

#[derive(serde::Deserialize)]
struct UidRequest {
    uid: Option<Value>,
}

/// POSTs `body` to `/mutate` and checks the contract on the answer.
async fn check(body: Vec<u8>, content_type: &str) -> Result<(), TestCaseError> {
    // The uid the answer must carry, if the body is JSON with one. Read through a struct, not
    // a `Value`: serde_json skips unknown fields without a depth limit, so a review nested past
    // the 128 levels a `Value` allows is still one the server may (rightly) answer.
    let uid = serde_json::from_slice::<UidProbe>(&body)
        .ok()
        .and_then(|probe| probe.request)
        .and_then(|request| request.uid);
    let oversized = body.len() > BODY_LIMIT;
    let request = Request::post("/mutate")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .expect("request");
    // Built here: kube's client needs a running runtime.
    let response = router(state()).oneshot(request).await.expect("infallible");
    let status = response.status();
    let json_content = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bytes = body_bytes(response).await;
    let text = String::from_utf8_lossy(&bytes);
    let answer: Value = serde_json::from_slice(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{status}: body is not JSON ({e}): {text}")))?;
    prop_assert!(json_content, "{status}: not application/json: {text}");

    match status {
        StatusCode::OK => {
            prop_assert!(!oversized, "a body over the limit was served: {text}");
            prop_assert_eq!(&answer["apiVersion"], "admission.k8s.io/v1", "{}", text);
            prop_assert_eq!(&answer["kind"], "AdmissionReview", "{}", text);
            let response = &answer["response"];
            // A 200 means the body was a review, so it had a uid; it must come back unchanged.
            let uid =
                uid.ok_or_else(|| TestCaseError::fail(format!("200 without a uid: {text}")))?;
            prop_assert_eq!(&response["uid"], &uid, "{}", text);
            // The webhook never blocks an edit.
            prop_assert_eq!(&response["allowed"], true, "{}", text);
            if let Some(patch) = response.get("patch").filter(|p| !p.is_null()) {
                prop_assert_eq!(&response["patchType"], "JSONPatch", "{}", text);
                // `[]byte` in Go's JSON: base64 text, or (what kube-core writes, see
                // kube-rs/kube#1781) an array of byte values; the apiserver decodes both.
                let raw: Option<Vec<u8>> = match patch {
                    Value::String(text) => BASE64.decode(text).ok(),
                    Value::Array(_) => serde_json::from_value(patch.clone()).ok(),
                    _ => None,
                };
                let decoded = raw.and_then(|p| serde_json::from_slice::<Value>(&p).ok());
                prop_assert!(
                    decoded.as_ref().is_some_and(Value::is_array),
                    "patch is not an encoded JSON Patch: {text}"
                );
            }
            if let Some(warnings) = response.get("warnings").and_then(Value::as_array) {
                for warning in warnings {
                    let warning = warning.as_str().unwrap_or_default();
                    prop_assert!(!warning.contains('\n'), "multi-line warning: {warning:?}");
                }
            }
        }
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            prop_assert!(
                answer["error"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{status} without an error text: {text}"
            );
            if oversized {
                prop_assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", text);
            }
        }
        other => prop_assert!(false, "unexpected status {other}: {text}"),
    }
    Ok(())
}

fn content_type() -> impl Strategy<Value = &'static str> {
    // The handler reads the body whatever its declared type; none of these may change that.
    prop::sample::select(vec![
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/octet-stream",
        "",
    ])
}

/// Any JSON value, a few levels deep, with strings that include control and non-ASCII text.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
        prop::sample::select(vec![
            "Namespace",
            "AdmissionReview",
            "admission.k8s.io/v1",
            "CREATE",
            "UPDATE",
            "DELETE",
            "CONNECT",
            "v1",
            "",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One change to a fixture's tree.
#[derive(Clone, Debug)]
enum Mutation {
    Tree(TreeEdit),
    /// Same place, value of another JSON type.
    WrongType(Index, u8),
}

/// Fields the handler and `review` look at.
const FIELDS: &[&str] = &[
    "/apiVersion",
    "/kind",
    "/request",
    "/request/uid",
    "/request/kind",
    "/request/kind/group",
    "/request/kind/version",
    "/request/kind/kind",
    "/request/name",
    "/request/operation",
    "/request/dryRun",
    "/request/object",
    "/request/object/metadata",
    "/request/object/metadata/name",
    "/request/object/metadata/labels",
    "/request/object/metadata/labels/istio.io~1rev",
    "/request/object/metadata/annotations",
    "/request/object/metadata/deletionTimestamp",
    "/request/oldObject",
    "/request/oldObject/metadata/labels",
    "/request/options",
    "/request/userInfo",
    "/response",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        12 => tree_edit(arb_json(), FIELDS, 0usize..=BODY_LIMIT + 4096, 1usize..100_000)
            .prop_map(Mutation::Tree),
        3 => (any::<Index>(), 0u8..6).prop_map(|(i, t)| Mutation::WrongType(i, t)),
    ]
}

fn wrong_type(current: Option<&Value>, pick: u8) -> Value {
    let candidates = [
        Value::Null,
        json!(true),
        json!(-1),
        json!("text"),
        json!([1, "two"]),
        json!({"x": 1}),
    ];
    // Skip the one of the same type as the current value.
    let same =
        |v: &Value| current.is_some_and(|c| std::mem::discriminant(c) == std::mem::discriminant(v));
    let others: Vec<&Value> = candidates.iter().filter(|v| !same(v)).collect();
    others[usize::from(pick) % others.len()].clone()
}

/// The fixture with `mutations` applied, serialized.
fn mutate(fixture: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut doc: Value = serde_json::from_str(fixture).expect("fixture");
    let mut splices = Splices::new(Syntax::Json);
    for mutation in mutations {
        match mutation {
            Mutation::Tree(edit) => edit.apply(&mut doc, &mut splices),
            Mutation::WrongType(i, choice) => {
                let at = i.get(&pointers(&doc)).clone();
                let value = wrong_type(doc.pointer(&at), *choice);
                set(&mut doc, &at, value);
            }
        }
    }
    splices.into_text(doc.to_string()).into_bytes()
}

/// Byte-level damage to a serialized fixture: cut it, or overwrite or insert bytes.
fn damage(mut body: Vec<u8>, edits: &[(Index, u8, u8)]) -> Vec<u8> {
    for (at, op, byte) in edits {
        if body.is_empty() {
            body.push(*byte);
            continue;
        }
        let at = at.index(body.len());
        damage_byte(&mut body, at, *op, *byte);
    }
    body
}

#[test]
fn fixtures_are_answered_with_their_uid() {
    let rt = runtime();
    for (name, fixture) in FIXTURES {
        let result = rt.block_on(check(fixture.as_bytes().to_vec(), "application/json"));
        if let Err(error) = result {
            panic!("{name}: {error}");
        }
    }
}

proptest! {
    #![proptest_config(mesh_core::fixtures::proptest_config())]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..4096), ct in content_type()) {
        runtime().block_on(check(body, ct))?;
    }

    #[test]
    fn arbitrary_json(value in arb_json(), wrapped in any::<bool>()) {
        // Half of the time inside a well-formed envelope, to get past the first checks.
        let value = if wrapped {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": value})
        } else {
            value
        };
        runtime().block_on(check(value.to_string().into_bytes(), "application/json"))?;
    }

    #[test]
    fn mutated_fixtures(
        fixture in prop::sample::select(FIXTURES.to_vec()),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let body = mutate(fixture.1, &mutations);
        runtime().block_on(check(body, "application/json"))?;
    }

    #[test]
    fn damaged_fixtures(
        fixture in prop::sample::select(FIXTURES.to_vec()),
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let body = damage(fixture.1.as_bytes().to_vec(), &edits);
        runtime().block_on(check(body, "application/json"))?;
    }
}
