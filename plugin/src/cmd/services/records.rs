//! A map kept as one sorted vector of its entries. The dashboard keeps tens of thousands of
//! services, EndpointSlices and pods for as long as it runs: a `BTreeMap` of them is mostly
//! half-full nodes (objects arrive in key order, and each split leaves the left node half
//! empty), a vector is just the entries, grown by an eighth at a time. Watches change a few
//! objects at a time after their first list, so shifting part of the vector on an insert or
//! a removal costs little.

use std::borrow::Borrow;

/// Entries a map grows by at least.
const MIN_GROWTH: usize = 16;

/// Entries sorted by key, each key once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Records<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for Records<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> Records<K, V> {
    /// Where `key` is, or where it would go.
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// Sets `key` to `value`; the value it had.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        // Listed objects come in key order: most inserts are appends.
        let at = match self.entries.last() {
            Some((last, _)) if *last < key => self.entries.len(),
            _ => match self.find(&key) {
                Ok(i) => {
                    return self
                        .entries
                        .get_mut(i)
                        .map(|(_, v)| std::mem::replace(v, value));
                }
                Err(i) => i,
            },
        };
        if self.entries.len() == self.entries.capacity() {
            self.entries
                .reserve_exact((self.entries.len() / 8).max(MIN_GROWTH));
        }
        self.entries.insert(at, (key, value));
        None
    }

    /// Removes `key`; its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        let (_, value) = self.entries.remove(i);
        self.shrink();
        Some(value)
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        self.entries.get(i).map(|(_, v)| v)
    }

    /// Whether `key` is there.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Keeps the entries for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
        self.shrink();
    }

    /// The entries from `start` on (`BTreeMap::range(start..)`).
    pub fn range_from<Q: Ord + ?Sized>(&self, start: &Q) -> impl Iterator<Item = (&K, &V)>
    where
        K: Borrow<Q>,
    {
        let from = self.entries.partition_point(|(k, _)| k.borrow() < start);
        self.entries
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (k, v))
    }

    /// Gives back room left by removals, keeping an eighth for growth.
    fn shrink(&mut self) {
        let len = self.entries.len();
        if self.entries.capacity() > len + len / 4 + MIN_GROWTH {
            self.entries.shrink_to(len + len / 8);
        }
    }
}

impl<K, V> Records<K, V> {
    /// The entries, sorted by key.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The values, by key.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<'a, K, V> IntoIterator for &'a Records<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for Records<K, V> {
    /// As `BTreeMap` collects: sorted, the last value of a key repeated wins.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(K, V)> = iter.into_iter().collect();
        // Stable: of equal keys, the last one collected stays last.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        Self { entries: kept }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, u8),
        Remove(u16),
        Retain(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..300, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0u16..300).prop_map(Op::Remove),
            1 => (1u16..7).prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// Every operation leaves it equal to a `BTreeMap` given the same operations.
        #[test]
        fn behaves_as_a_btreemap(ops in proptest::collection::vec(op(), 0..400), from in 0u16..300) {
            let mut records = Records::default();
            let mut map = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(records.insert(k, v), map.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(records.remove(&k), map.remove(&k)),
                    Op::Retain(m) => {
                        records.retain(|k, _| k % m != 0);
                        map.retain(|k, _| k % m != 0);
                    }
                }
                prop_assert_eq!(records.len(), map.len());
            }
            prop_assert!(records.iter().eq(map.iter()));
            prop_assert!(records.range_from(&from).eq(map.range(from..)));
            for k in 0..300u16 {
                prop_assert_eq!(records.get(&k), map.get(&k));
                prop_assert_eq!(records.contains_key(&k), map.contains_key(&k));
            }
        }

        /// Collecting keeps the last value of a repeated key, as `BTreeMap` does.
        #[test]
        fn collects_as_a_btreemap(entries in proptest::collection::vec((0u8..50, any::<u8>()), 0..200)) {
            let records: Records<u8, u8> = entries.iter().copied().collect();
            let map: BTreeMap<u8, u8> = entries.into_iter().collect();
            prop_assert!(records.iter().eq(map.iter()));
        }
    }

    #[test]
    fn grows_by_an_eighth_and_gives_room_back() {
        let mut records = Records::default();
        for k in 0..10_000u32 {
            records.insert(k, ());
        }
        let capacity = records.entries.capacity();
        assert!(capacity <= 10_000 + 10_000 / 8 + MIN_GROWTH, "{capacity}");
        records.retain(|k, _| *k < 1_000);
        assert!(records.entries.capacity() <= 1_000 + 1_000 / 4 + MIN_GROWTH);
        assert_eq!(
            records.keys().copied().collect::<Vec<_>>(),
            (0..1_000).collect::<Vec<_>>()
        );
    }
}
