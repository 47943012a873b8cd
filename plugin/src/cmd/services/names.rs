//! One copy of each name: a namespace's name is shared by its services, EndpointSlices and
//! pods on every cluster, a service's name by its EndpointSlices, a service's type and ports
//! by most services. The dashboard keeps tens of thousands of records for as long as
//! it runs; each holds reference-counted pointers into this table instead of its own strings.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

/// A shared name.
pub type Name = Arc<str>;

/// The table: names and shapes (a service's type and ports) handed out, each stored once.
#[derive(Debug)]
pub struct Table<Shape> {
    names: HashSet<Arc<str>>,
    shapes: HashSet<Arc<Shape>>,
}

impl<Shape> Default for Table<Shape> {
    fn default() -> Self {
        Self {
            names: HashSet::new(),
            shapes: HashSet::new(),
        }
    }
}

impl<Shape: Hash + Eq> Table<Shape> {
    /// The shared copy of `name`.
    pub fn name(&mut self, name: &str) -> Name {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        let shared: Name = Arc::from(name);
        self.names.insert(shared.clone());
        shared
    }

    /// The shared copy of `shape`.
    pub fn shape(&mut self, shape: Shape) -> Arc<Shape> {
        if let Some(shared) = self.shapes.get(&shape) {
            return shared.clone();
        }
        let shared = Arc::new(shape);
        self.shapes.insert(shared.clone());
        shared
    }

    /// Forgets what no record holds any more (deleted objects' names).
    pub fn purge(&mut self) {
        self.names.retain(|n| Arc::strong_count(n) > 1);
        self.shapes.retain(|p| Arc::strong_count(p) > 1);
    }

    /// Names and shapes held.
    pub fn len(&self) -> usize {
        self.names.len() + self.shapes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::services::{PortFacts, ServiceShape};

    #[test]
    fn one_copy_each_until_unused() {
        let mut names = Table::default();
        let a = names.name("shop");
        let b = names.name("shop");
        assert!(Arc::ptr_eq(&a, &b));
        let shape = ServiceShape {
            type_: "ClusterIP".into(),
            ports: [PortFacts {
                name: "http".into(),
                port: 80,
                protocol: "TCP".into(),
            }]
            .into(),
        };
        let p = names.shape(shape.clone());
        assert!(Arc::ptr_eq(&p, &names.shape(shape)));
        let other = names.name("db");
        assert_eq!(names.len(), 3);
        drop(other);
        names.purge();
        assert_eq!(names.len(), 2, "db is held by no record");
        drop((a, b, p));
        names.purge();
        assert!(names.is_empty());
    }
}
