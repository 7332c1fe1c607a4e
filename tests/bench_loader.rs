//! Malformed benchmark input gives one clear error naming the file, the record and the field.

mod common;

use std::path::Path;

use lpzero::bench::flexibert::{parse, Mixer};

fn error_for(records: serde_json::Value) -> String {
    let text = serde_json::to_string(&records).unwrap();
    format!("{:#}", parse(&text, Path::new("bench.json")).unwrap_err())
}

fn assert_names(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` should mention `{p}`");
    }
    assert!(!msg.contains('\n'), "error should be one line: {msg}");
}

#[test]
fn valid_fixture_loads() {
    let text = serde_json::to_string(&common::fixture_records()).unwrap();
    let bench = parse(&text, Path::new("bench.json")).unwrap();
    assert_eq!(bench.len(), 4);
    assert_eq!(bench.entries[1].key, "1");
    assert_eq!(bench.entries[1].truth, 73.4);
    let Some(rec) = bench.entries[1]
        .arch
        .get::<lpzero::bench::flexibert::Record>()
    else {
        panic!("expected a FlexiBERT record");
    };
    assert_eq!(rec.layers[2].mixer, Mixer::Dsc { kernel: 9 });
    assert_eq!(rec.scores["cola"], 1.0);
}

#[test]
fn missing_field_names_record_and_field() {
    let mut recs = common::fixture_records();
    recs[2]["hparams"]["model_hparam_overrides"]["nas_config"]["encoder_layers"][1]
        .as_object_mut()
        .unwrap()
        .remove("num_feed_forward");
    let msg = error_for(serde_json::Value::Array(recs));
    assert_names(
        &msg,
        &[
            "bench.json",
            "record id 2",
            "encoder_layers[1]",
            "num_feed_forward",
        ],
    );
}

#[test]
fn wrong_type_names_record_and_field() {
    let mut recs = common::fixture_records();
    recs[1]["hparams"]["model_hparam_overrides"]["nas_config"]["encoder_layers"][0]
        ["num_operation_heads"] = serde_json::json!("four");
    let msg = error_for(serde_json::Value::Array(recs));
    assert_names(
        &msg,
        &[
            "record id 1",
            "encoder_layers[0].num_operation_heads",
            "expected",
        ],
    );
}

#[test]
fn unknown_operation_type_is_rejected() {
    let mut recs = common::fixture_records();
    recs[0]["hparams"]["model_hparam_overrides"]["nas_config"]["encoder_layers"][3]
        ["operation_type"] = serde_json::json!("RNN");
    let msg = error_for(serde_json::Value::Array(recs));
    assert_names(
        &msg,
        &[
            "record id 0",
            "encoder_layers[3].operation_type",
            "\"SA\", \"LT\" or \"DSC\"",
            "RNN",
        ],
    );
}

#[test]
fn unknown_operation_parameter_is_rejected() {
    let mut recs = common::fixture_records();
    recs[3]["hparams"]["model_hparam_overrides"]["nas_config"]["encoder_layers"][0]
        ["operation_parameter"] = serde_json::json!("XYZ");
    let msg = error_for(serde_json::Value::Array(recs.clone()));
    assert_names(
        &msg,
        &[
            "record id 3",
            "encoder_layers[0].operation_parameter",
            "SDP",
            "XYZ",
        ],
    );
    // An even DSC kernel is not a valid convolution size.
    recs[3]["hparams"]["model_hparam_overrides"]["nas_config"]["encoder_layers"][0] = serde_json::json!({"operation_type": "DSC", "operation_parameter": 4, "num_operation_heads": 2,
                           "feed_forward_dimension": 512, "num_feed_forward": 1});
    let msg = error_for(serde_json::Value::Array(recs));
    assert_names(&msg, &["record id 3", "operation_parameter", "odd"]);
}

#[test]
fn non_contiguous_ids_are_rejected() {
    let mut recs = common::fixture_records();
    recs[2]["id"] = serde_json::json!(7);
    let msg = error_for(serde_json::Value::Array(recs));
    assert_names(&msg, &["record id 7", "field `id`", "expected 2"]);
}

#[test]
fn missing_glue_and_unknown_layer_key_are_rejected() {
    let mut recs = common::fixture_records();
    recs[1]["scores"].as_object_mut().unwrap().remove("glue");
    let msg = error_for(serde_json::Value::Array(recs));
    assert_names(&msg, &["record id 1", "scores.glue"]);

    let mut recs = common::fixture_records();
    recs[0]["hparams"]["model_hparam_overrides"]["nas_config"]["encoder_layers"][0]["dropout"] =
        serde_json::json!(0.1);
    let msg = error_for(serde_json::Value::Array(recs));
    assert_names(&msg, &["record id 0", "encoder_layers[0]", "dropout"]);
}

#[test]
fn not_an_array_and_empty_are_rejected() {
    let msg = error_for(serde_json::json!({"id": 0}));
    assert_names(&msg, &["bench.json", "JSON array"]);
    let msg = error_for(serde_json::json!([]));
    assert_names(&msg, &["bench.json", "no record"]);
    let msg = error_for(serde_json::json!([{"id": 0}]));
    assert_names(&msg, &["record id 0", "scores"]);
}

/// A key given twice would silently replace the first value (here the ground truth): it is an
/// error naming the record, the field and the line.
#[test]
fn repeated_keys_are_rejected() {
    let recs = common::fixture_records();
    let text = serde_json::to_string_pretty(&recs).unwrap();
    // Give record 1 a second `glue` score inside its `scores` object.
    let at = text.find("\"glue\": 73.4").unwrap();
    let twice = format!("{}\"glue\": 99.0,\n{}", &text[..at], &text[at..]);
    let line = twice[..at].lines().count() + 1;
    let msg = format!("{:#}", parse(&twice, Path::new("bench.json")).unwrap_err());
    assert_names(
        &msg,
        &[
            "bench.json",
            "`[1].scores.glue`",
            "twice",
            &format!("line {line}"),
        ],
    );
    // Also inside a layer, and at the top of a record.
    let twice = text.replacen(
        "\"num_feed_forward\": 3",
        "\"num_feed_forward\": 3, \"num_feed_forward\": 1",
        1,
    );
    let msg = format!("{:#}", parse(&twice, Path::new("bench.json")).unwrap_err());
    assert_names(
        &msg,
        &["[0].hparams.model_hparam_overrides.nas_config.encoder_layers[0].num_feed_forward"],
    );
    let twice = text.replacen("\"id\": 2,", "\"id\": 2, \"id\": 3,", 1);
    let msg = format!("{:#}", parse(&twice, Path::new("bench.json")).unwrap_err());
    assert_names(&msg, &["`[2].id`", "twice"]);
}
