//! Builders of test namespaces, shared by the unit tests of the crates that use the rule.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A namespace with only a name, as a unit test wants it; `.label(..)` etc. add the rest.
pub fn ns(name: &str) -> Namespace {
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_owned());
    ns
}

/// Fluent setters on [`Namespace`] for readable test fixtures.
pub trait NamespaceExt {
    fn label(self, key: &str, value: &str) -> Self;
    fn annotation(self, key: &str, value: &str) -> Self;
    fn rv(self, resource_version: &str) -> Self;
    fn deleting(self) -> Self;
}

impl NamespaceExt for Namespace {
    fn label(mut self, key: &str, value: &str) -> Self {
        self.metadata
            .labels
            .get_or_insert_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    fn annotation(mut self, key: &str, value: &str) -> Self {
        self.metadata
            .annotations
            .get_or_insert_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    fn rv(mut self, resource_version: &str) -> Self {
        self.metadata.resource_version = Some(resource_version.to_owned());
        self
    }

    fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        self
    }
}

/// Property-test settings shared by every crate: `PROPTEST_CASES` (proptest's own variable)
/// when set, else 256 cases, so CI stays bounded and a developer can ask for more. Failures
/// print the minimal input; no regression files are written next to the sources.
pub fn proptest_config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
