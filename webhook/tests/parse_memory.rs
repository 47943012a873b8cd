//! How much memory a parsed review takes for the bytes of its body, whatever a stranger puts in
//! it: the budget of `/mutate` charges [`mesh_webhook::http::PARSED_BYTES_PER_BODY_BYTE`] for
//! each byte, and this measures the worst shapes against it with a counting allocator (its own
//! test binary: the allocator counts the whole process). Parsed as kube's `AdmissionReview`, a
//! body of `{},` managed fields took 132 bytes a byte.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use mesh_webhook::http::{BODY_LIMIT, PARSED_BYTES_PER_BODY_BYTE, parse_review};
use peak_alloc::PeakAlloc;

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// A review of namespace `shop` whose `filler` (a JSON member of the request, or of the
/// object) brings the body to about `BODY_LIMIT` bytes.
fn review(request_member: &str, object_member: &str) -> String {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{
        "uid":"u","kind":{{"group":"","version":"v1","kind":"Namespace"}},
        "resource":{{"group":"","version":"v1","resource":"namespaces"}},
        "name":"shop","operation":"UPDATE",{request_member}
        "object":{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"shop",{object_member}
        "labels":{{"istio-injection":"enabled"}}}}}}}}}}"#
    )
}

/// `count` items made by `item`, comma-separated, within a body of `BODY_LIMIT`.
fn items(item: impl Fn(usize) -> String) -> String {
    let mut out = String::new();
    let mut n = 0;
    while out.len() + 64 < BODY_LIMIT - 1024 {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&item(n));
        n += 1;
    }
    out
}

#[test]
fn a_parsed_review_stays_within_its_charge_whatever_its_shape() {
    let no_user = r#""userInfo":{},"#;
    let in_request = |member: String| review(&format!("{no_user}{member}"), "");
    let in_object = |member: String| review(no_user, &member);
    let shapes = [
        (
            "numbers in options",
            in_request(format!(r#""options":[{}],"#, items(|_| "0".into()))),
        ),
        (
            "empty arrays in options",
            in_request(format!(r#""options":[{}],"#, items(|_| "[]".into()))),
        ),
        (
            "empty objects in options",
            in_request(format!(r#""options":[{}],"#, items(|_| "{}".into()))),
        ),
        (
            "short keys in options",
            in_request(format!(
                r#""options":{{{}}},"#,
                items(|n| format!(r#""{n:x}":0"#))
            )),
        ),
        (
            "annotations",
            in_object(format!(
                r#""annotations":{{{}}},"#,
                items(|n| format!(r#""{n:x}":"""#))
            )),
        ),
        (
            "finalizers",
            in_object(format!(r#""finalizers":[{}],"#, items(|_| r#""""#.into()))),
        ),
        (
            "managed fields",
            in_object(format!(r#""managedFields":[{}],"#, items(|_| "{}".into()))),
        ),
        (
            "managed fieldsV1",
            in_object(format!(
                r#""managedFields":[{{"fieldsV1":[{}]}}],"#,
                items(|_| "0".into())
            )),
        ),
        (
            "labels",
            in_request(format!(
                r#""oldObject":{{"metadata":{{"labels":{{{}}}}}}},"#,
                items(|n| format!(r#""{n:x}":"""#))
            )),
        ),
        (
            "user extra",
            review(
                &format!(
                    r#""userInfo":{{"extra":{{{}}}}},"#,
                    items(|n| format!(r#""{n:x}":[]"#))
                ),
                "",
            ),
        ),
    ];
    for (shape, body) in shapes {
        assert!(body.len() <= BODY_LIMIT, "{shape}: {} bytes", body.len());
        let before = ALLOCATOR.current_usage();
        ALLOCATOR.reset_peak_usage();
        let parsed = parse_review(body.as_bytes());
        let peak = ALLOCATOR.peak_usage() - before;
        // What the webhook reads is kept: the object's labels, and the old object's.
        let request = parsed.unwrap_or_else(|e| panic!("{shape}: {e}"));
        let labels = |ns: Option<&Namespace>| ns.and_then(|ns| ns.metadata.labels.clone());
        let injected = BTreeMap::from([("istio-injection".to_owned(), "enabled".to_owned())]);
        assert_eq!(labels(request.object.as_ref()), Some(injected), "{shape}");
        let old_labels = labels(request.old_object.as_ref()).map_or(0, |l| l.len());
        assert_eq!(old_labels > 0, shape == "labels", "{shape}: {old_labels}");
        drop(request);
        let per_byte = peak as f64 / body.len() as f64;
        println!(
            "{shape}: {peak} bytes at the peak for {} ({per_byte:.1} a byte)",
            body.len()
        );
        assert!(
            peak <= body.len() * PARSED_BYTES_PER_BODY_BYTE,
            "{shape}: {per_byte:.1} bytes a body byte, over the {PARSED_BYTES_PER_BODY_BYTE} charged"
        );
    }
}
