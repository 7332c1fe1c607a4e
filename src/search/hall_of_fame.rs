//! The hall of fame: the best distinct proxies seen during a search.
//!
//! Distinct means distinct canonical keys ([`crate::proxy::canonical::key`]), so equivalent
//! expressions (`add(a, b)` and `add(b, a)`) take one place, and distinct rankings of the
//! fitness set ([`HallEntry::ranking`]): `x` and `sqrt(x)` rank every architecture alike, so
//! the first one found keeps the place and the hall of fame stays diverse. Entries are ordered
//! by fitness, best first; among equal fitness the one found first comes first. The hall of fame keeps the
//! best proxies even after the population has lost them.

use serde::{Deserialize, Serialize};

use crate::proxy::expr::Expr;

/// One proxy in the hall of fame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HallEntry {
    /// The expression as reported (`neg(…)` of the genome's when `negated`; serialised as its
    /// text).
    pub expr: Expr,
    /// Its canonical key.
    pub key: String,
    /// Its fitness (Spearman over the fitness set).
    pub fitness: f64,
    /// The iteration that found it (0: the initial population).
    pub iteration: usize,
    /// A hash of the ranks it gives the fitness architectures (0: unknown, never matches).
    #[serde(default)]
    pub ranking: u64,
    /// The proxy found ranks backwards and is reported negated (only with `either_sign`).
    #[serde(default)]
    pub negated: bool,
    /// The restart that found it ([`crate::search::SearchOptions::restarts`]; 0 in a single
    /// run).
    #[serde(default)]
    pub restart: usize,
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

    /// Rebuilds one from saved entries, as [`HallOfFame::entries`] gave them. Fails, saying
    /// why, unless they could have come from a hall of fame of this capacity: capacity ≥ 1, at
    /// most `capacity` entries, distinct keys, fitness never increasing (a saved file may have
    /// been edited).
    pub fn from_saved(capacity: usize, entries: Vec<HallEntry>) -> Result<Self, String> {
        if capacity == 0 {
            return Err("a hall of fame of capacity 0".into());
        }
        if entries.len() > capacity {
            return Err(format!(
                "{} hall-of-fame entries for a capacity of {capacity}",
                entries.len()
            ));
        }
        for (i, pair) in entries.windows(2).enumerate() {
            // NaN compares as unordered, which counts as unsorted too.
            let ordered = pair[0].fitness.partial_cmp(&pair[1].fitness);
            if !matches!(
                ordered,
                Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
            ) {
                return Err(format!(
                    "hall-of-fame entries {} and {} are not sorted by fitness (best first)",
                    i + 1,
                    i + 2
                ));
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if entries[..i].iter().any(|x| x.key == e.key) {
                return Err(format!(
                    "hall-of-fame entry {} repeats the key of an earlier entry",
                    i + 1
                ));
            }
        }
        Ok(Self { capacity, entries })
    }

    /// Offers an entry; returns true when it entered (a new key good enough to be kept).
    pub fn insert(&mut self, entry: HallEntry) -> bool {
        let same_ranking = |e: &HallEntry| entry.ranking != 0 && e.ranking == entry.ranking;
        if self.capacity == 0
            || self
                .entries
                .iter()
                .any(|e| e.key == entry.key || same_ranking(e))
        {
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
            // The hall of fame never reads the expression: any will do.
            expr: Expr::input(crate::proxy::expr::Input::Act),
            key: key.to_string(),
            fitness,
            iteration,
            ranking: 0,
            negated: false,
            restart: 0,
        }
    }

    #[test]
    fn one_place_per_ranking() {
        let mut h = HallOfFame::new(3);
        assert!(h.insert(HallEntry {
            ranking: 7,
            ..e("x", 0.8, 0)
        }));
        assert!(!h.insert(HallEntry {
            ranking: 7,
            ..e("sqrt(x)", 0.8, 1)
        }));
        assert!(h.insert(HallEntry {
            ranking: 8,
            ..e("y", 0.8, 2)
        }));
        // Unknown rankings never collide.
        assert!(h.insert(e("z", 0.7, 3)));
        assert_eq!(h.entries().len(), 3);
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
        let again = HallOfFame::from_saved(3, h.entries().to_vec()).unwrap();
        assert_eq!(again, h);
        let mut unsorted = h.entries().to_vec();
        unsorted.swap(0, 1);
        assert!(HallOfFame::from_saved(3, unsorted).is_err());
        assert!(HallOfFame::from_saved(0, Vec::new()).is_err());
        assert!(HallOfFame::from_saved(2, h.entries().to_vec()).is_err());
        let twice = vec![e("a", 0.5, 0), e("a", 0.4, 1)];
        assert!(HallOfFame::from_saved(3, twice).is_err());
    }
}
