//! JSON parsing that refuses an object naming the same key twice.
//!
//! `serde_json` keeps the last value of a repeated key without a word, so a record with two
//! `glue` scores, or two `truth` values, would silently change the ground truth. [`parse`]
//! builds the same [`Value`] but stops at the first repeated key, naming it by its path in the
//! document (`[3].scores.glue`).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses JSON `text` (one document, nothing after it) into a [`Value`], rejecting repeated
/// keys. Errors carry serde_json's position; see [`message`] and [`serde_json::Error::line`].
pub fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict {
        path: String::new(),
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The message of a serde_json error without the ` at line L column C` suffix (callers that
/// know better how to locate it, such as a JSON Lines reader, add their own).
pub fn message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_string()
}

/// Deserialises one value whose path in the document is `path` (empty at the root).
struct Strict {
    path: String,
}

impl Strict {
    fn child_key(&self, key: &str) -> Strict {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        Strict { path }
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json's own `Value`: a non-finite float cannot come from JSON text.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let item = Strict {
                path: format!("{}[{}]", self.path, items.len()),
            };
            match seq.next_element_seed(item)? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = self.child_key(&key);
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "field `{}` is given twice; expected each key once per object",
                    child.path
                )));
            }
            let value = map.next_value_seed(child)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values_as_serde_json_and_repeats_rejected() {
        let text =
            r#"[{"a": 1, "b": [true, null, -2, 2.5e3, "x"], "c": {"d": 18446744073709551615}}]"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        let e = parse("[{\"a\": 1}, {\"b\": {\"c\": 1,\n \"c\": 2}}]").unwrap_err();
        let msg = message(&e);
        assert!(msg.contains("`[1].b.c` is given twice"), "{msg}");
        assert_eq!(e.line(), 2);
        let e = parse(r#"{"id": 1, "id": 1}"#).unwrap_err();
        assert!(message(&e).contains("`id`"), "{e}");
        assert!(parse("{} x").is_err());
        assert!(parse("[1,]").is_err());
    }
}
