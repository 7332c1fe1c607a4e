//! Parameter counts of benchmark architectures, counted from the built models' tensors.

use crate::bench::{Arch, Benchmark};
use crate::models::flexibert::{Config, FlexiBert, SizeMode};
use anyhow::Result;

/// `(key, total parameters)` for each selected architecture, in selection order.
pub fn count(
    bench: &Benchmark,
    selection: &[usize],
    sizes: SizeMode,
) -> Result<Vec<(String, usize)>> {
    selection
        .iter()
        .map(|&i| {
            let entry = &bench.entries[i];
            let total = match &entry.arch {
                Arch::Flexibert(record) => {
                    let config = Config::from_record(record, sizes)?;
                    FlexiBert::shapes_only(&config)?.params().count()
                }
            };
            Ok((entry.key.clone(), total))
        })
        .collect()
}
