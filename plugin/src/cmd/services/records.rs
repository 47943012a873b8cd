//! A map kept as sorted blocks of its entries. The dashboard keeps tens of thousands of
//! services, EndpointSlices and pods for as long as it runs: a `BTreeMap` of them is mostly
//! half-full nodes (objects arrive in key order, and each split leaves the left node half
//! empty); here a block fills up before the next one starts, so objects listed in key order
//! take their own size and little more. Blocks are small and allocated once at their full
//! size: growing a map never moves it whole (a vector of half a megabyte reallocated leaves
//! a hole of its old size in the heap each time). Watches change a few objects at a time
//! after their first list: an insert shifts part of one block, or splits a full one.

use std::borrow::Borrow;

/// Entries per block.
const BLOCK: usize = 128;

/// Entries sorted by key, each key once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Records<K, V> {
    /// None empty, each at most [`BLOCK`] long, each key greater than the previous block's.
    blocks: Vec<Vec<(K, V)>>,
    len: usize,
}

impl<K, V> Default for Records<K, V> {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            len: 0,
        }
    }
}

/// A block of its full size, holding `entries`.
fn block<K, V>(entries: impl IntoIterator<Item = (K, V)>) -> Vec<(K, V)> {
    let mut block = Vec::with_capacity(BLOCK);
    block.extend(entries);
    block
}

impl<K: Ord, V> Records<K, V> {
    /// The block that holds `key` if any does: the first whose last key is not below it.
    fn block_of<Q: Ord + ?Sized>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
    {
        self.blocks
            .partition_point(|b| b.last().is_some_and(|(k, _)| k.borrow() < key))
    }

    /// Sets `key` to `value`; the value it had.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        // Past every key: into the last block (listed objects come in key order).
        let i = self.block_of(&key).min(self.blocks.len().saturating_sub(1));
        let Some(b) = self.blocks.get_mut(i) else {
            self.blocks.push(block([(key, value)]));
            self.len += 1;
            return None;
        };
        let at = match b.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(j) => return b.get_mut(j).map(|(_, v)| std::mem::replace(v, value)),
            Err(j) => j,
        };
        self.len += 1;
        if b.len() < BLOCK {
            b.insert(at, (key, value));
        } else if at == BLOCK {
            // After a full block: the next one, or a new one.
            match self.blocks.get_mut(i + 1) {
                Some(next) if next.len() < BLOCK => next.insert(0, (key, value)),
                _ => self.blocks.insert(i + 1, block([(key, value)])),
            }
        } else {
            // A full block splits in two halves.
            let mut tail = block(b.drain(BLOCK / 2..));
            if at <= BLOCK / 2 {
                b.insert(at, (key, value));
            } else {
                tail.insert(at - BLOCK / 2, (key, value));
            }
            self.blocks.insert(i + 1, tail);
        }
        None
    }

    /// Removes `key`; its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.block_of(key);
        let b = self.blocks.get_mut(i)?;
        let j = b.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        let (_, value) = b.remove(j);
        if b.is_empty() {
            self.blocks.remove(i);
        }
        self.len -= 1;
        Some(value)
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let b = self.blocks.get(self.block_of(key))?;
        let j = b.binary_search_by(|(k, _)| k.borrow().cmp(key)).ok()?;
        b.get(j).map(|(_, v)| v)
    }

    /// Whether `key` is there.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    /// Keeps the entries for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for b in &mut self.blocks {
            b.retain_mut(|(k, v)| keep(k, v));
        }
        self.blocks.retain(|b| !b.is_empty());
        self.len = self.blocks.iter().map(Vec::len).sum();
    }

    /// The entries from `start` on (`BTreeMap::range(start..)`).
    pub fn range_from<Q: Ord + ?Sized>(&self, start: &Q) -> impl Iterator<Item = (&K, &V)>
    where
        K: Borrow<Q>,
    {
        let i = self.block_of(start);
        let rest = self.blocks.get(i..).unwrap_or_default();
        let skip = rest
            .first()
            .map_or(0, |b| b.partition_point(|(k, _)| k.borrow() < start));
        rest.iter().flatten().skip(skip).map(|(k, v)| (k, v))
    }
}

impl<K, V> Records<K, V> {
    /// The entries, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.into_iter()
    }

    /// The values, by key.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

type Entries<'a, K, V> = std::iter::Map<
    std::iter::Flatten<std::slice::Iter<'a, Vec<(K, V)>>>,
    fn(&'a (K, V)) -> (&'a K, &'a V),
>;

impl<'a, K, V> IntoIterator for &'a Records<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Entries<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.blocks.iter().flatten().map(|(k, v)| (k, v))
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for Records<K, V> {
    /// As `BTreeMap` collects: sorted, the last value of a key repeated wins.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(K, V)> = iter.into_iter().collect();
        // Stable: of equal keys, the last one collected stays last.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut records = Self::default();
        for (key, value) in entries {
            // In key order: each lands at the end, the last of equal keys winning.
            records.insert(key, value);
        }
        records
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
            4 => (0u16..1000, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0u16..1000).prop_map(Op::Remove),
            1 => (1u16..7).prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// Every operation leaves it equal to a `BTreeMap` given the same operations.
        #[test]
        fn behaves_as_a_btreemap(ops in proptest::collection::vec(op(), 0..1500), from in 0u16..1000) {
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
            prop_assert!(records.blocks.iter().all(|b| !b.is_empty() && b.len() <= BLOCK));
            prop_assert!(records.iter().eq(map.iter()));
            prop_assert!(records.range_from(&from).eq(map.range(from..)));
            for k in 0..1000u16 {
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
    fn entries_listed_in_order_fill_their_blocks() {
        let mut records = Records::default();
        for k in 0..10_000u32 {
            records.insert(k, ());
        }
        assert_eq!(records.blocks.len(), 10_000_usize.div_ceil(BLOCK));
        assert!(records.blocks.iter().all(|b| b.capacity() == BLOCK));
        assert!(
            records
                .blocks
                .iter()
                .rev()
                .skip(1)
                .all(|b| b.len() == BLOCK)
        );
        records.retain(|k, _| *k < 1_000);
        assert_eq!(records.blocks.len(), 1_000_usize.div_ceil(BLOCK));
        assert_eq!(
            records.keys().copied().collect::<Vec<_>>(),
            (0..1_000).collect::<Vec<_>>()
        );
    }
}
