//! The hall of fame: the best distinct proxies seen during a search.
//!
//! Distinct means distinct canonical keys ([`crate::proxy::expr::key`]), so equivalent
//! expressions (`add(a, b)` and `add(b, a)`) take one place. Entries are ordered by fitness,
//! best first; among equal fitness the one found first comes first. The hall of fame keeps the
//! best proxies even after the population has lost them.

use serde::{Deserialize, Serialize};

/// One proxy in the hall of fame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HallEntry {
    /// The expression text as found (parse it with [`crate::proxy::expr::parse`]).
    pub expr: String,
    /// Its canonical key.
    pub key: String,
    /// Its fitness (Spearman over the fitness set).
    pub fitness: f64,
    /// The iteration that found it (0: the initial population).
    pub iteration: usize,
}

/// The best `capacity` distinct proxies, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HallOfFame {
    capacity: usize,
    entries: Vec<HallEntry>,
}

impl HallOfFame {
    /// An empty hall of fame holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Vec::new(),
        }
    }

    /// Rebuilds one from saved entries (re-sorted and truncated to `capacity`).
    pub fn from_entries(capacity: usize, entries: Vec<HallEntry>) -> Self {
        let mut h = Self::new(capacity);
        for e in entries {
            h.insert(e);
        }
        h
    }

    /// Offers an entry; returns true when it entered (a new key good enough to be kept).
    pub fn insert(&mut self, entry: HallEntry) -> bool {
        if self.capacity == 0 || self.entries.iter().any(|e| e.key == entry.key) {
            return false;
        }
        // After all entries with fitness >= the new one (earlier finds win ties).
        let pos = self
            .entries
            .iter()
            .position(|e| e.fitness < entry.fitness)
            .unwrap_or(self.entries.len());
        if pos >= self.capacity {
            return false;
        }
        self.entries.insert(pos, entry);
        self.entries.truncate(self.capacity);
        true
    }

    /// The entries, best first.
    pub fn entries(&self) -> &[HallEntry] {
        &self.entries
    }

    /// The maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The best entry, if any.
    pub fn best(&self) -> Option<&HallEntry> {
        self.entries.first()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, fitness: f64, iteration: usize) -> HallEntry {
        HallEntry {
            expr: key.to_string(),
            key: key.to_string(),
            fitness,
            iteration,
        }
    }

    #[test]
    fn keeps_best_distinct() {
        let mut h = HallOfFame::new(3);
        assert!(h.insert(e("a", 0.5, 0)));
        assert!(h.insert(e("b", 0.7, 1)));
        assert!(!h.insert(e("a", 0.5, 2)));
        assert!(h.insert(e("c", 0.5, 3)));
        assert!(h.insert(e("d", 0.9, 4)));
        assert!(!h.insert(e("f", 0.1, 5)));
        let keys: Vec<&str> = h.entries().iter().map(|x| x.key.as_str()).collect();
        assert_eq!(keys, ["d", "b", "a"]);
        assert_eq!(h.best().unwrap().fitness, 0.9);
        let again = HallOfFame::from_entries(3, h.entries().to_vec());
        assert_eq!(again, h);
    }
}
