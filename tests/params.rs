//! Parameter counts equal the reference formulas (spec §1.10) and the reference CSV.

mod common;

use std::path::Path;

use lpzero::bench::{flexibert, Benchmark};
use lpzero::models::flexibert::SizeMode;

fn fixture() -> Benchmark {
    let text = serde_json::to_string(&common::fixture_records()).unwrap();
    flexibert::parse(&text, Path::new("fixture.json")).unwrap()
}

#[test]
fn faithful_counts_match_worked_examples() {
    let bench = fixture();
    let counts = lpzero::params::count(&bench, &[0, 1, 2], SizeMode::Faithful).unwrap();
    let totals: Vec<usize> = counts.iter().map(|(_, t)| *t).collect();
    assert_eq!(totals, vec![13_330_176, 11_106_199, 9_557_650]);
}

#[test]
fn intended_counts_use_json_sizes() {
    let bench = fixture();
    // Record 3: H = 128 (no embedding projection since E = H), FFN 1024, one FFN layer each.
    // Embeddings 30522·128 + 512·128 + 2·128 + 2·128; SA-SDP 3·lin(128,128) + out lin + 2H;
    // LT lin(128,128); FFN per layer lin(128,1024) + lin(1024,128) + 2H.
    let lin = |i: usize, o: usize| i * o + o;
    let emb = 30522 * 128 + 512 * 128 + 2 * 128 + 2 * 128;
    let ffn = lin(128, 1024) + lin(1024, 128) + 256;
    let expected = emb + (3 * lin(128, 128) + lin(128, 128) + 256 + ffn) + (lin(128, 128) + ffn);
    let counts = lpzero::params::count(&bench, &[3], SizeMode::Intended).unwrap();
    assert_eq!(counts[0].1, expected);
}

/// All 500 faithful counts of the shipped benchmark equal the reference CSV column.
#[test]
fn faithful_counts_match_reference_csv_for_all_500() {
    let dir = common::shipped_data();
    let bench = Benchmark::load(flexibert::KIND, &common::shipped_source()).unwrap();
    assert_eq!(bench.len(), 500);
    let selection: Vec<usize> = (0..bench.len()).collect();
    let counts = lpzero::params::count(&bench, &selection, SizeMode::Faithful).unwrap();
    let csv = std::fs::read_to_string(dir.join("flexibert/reference_proxy_scores.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "Number of Parameters")
        .unwrap();
    let mut checked = 0;
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let id: usize = cells[0].parse().unwrap();
        let reference: f64 = cells[col].parse().unwrap();
        assert_eq!(counts[id].1 as f64, reference, "architecture {id}");
        checked += 1;
    }
    assert_eq!(checked, 500);
}
