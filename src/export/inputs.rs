//! A file holding one architecture's five input lists, so that an exported proxy can be run
//! outside lpzero on exactly the arrays lpzero saw.
//!
//! Layout: one line of JSON, then the raw values. The JSON is
//! `{"format": "lpzero-inputs", "version": 1, "dtype": "float32", "byteorder": "little",
//! "lists": {"act": [{"shape": [2, 16, 1024], "offset": 0}, ...], "head": [...], "softmax":
//! [...], "grad": [...], "weight": [...]}}`, followed by a newline; after it come the values of
//! every array as little-endian `f32`, row-major, where `offset` counts values (not bytes)
//! from the start of that data. In Python:
//!
//! ```python
//! data = open(path, "rb").read()
//! end = data.index(b"\n")
//! header, flat = json.loads(data[:end]), torch.frombuffer(bytearray(data[end + 1:]), dtype=torch.float32)
//! act = [flat[a["offset"]:a["offset"] + math.prod(a["shape"])].reshape(a["shape"]) for a in header["lists"]["act"]]
//! ```

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::array::Array;
use crate::proxy::eval::InputSource;
use crate::proxy::expr::Input;
use crate::report::{clip, write_atomic};

/// The `format` field of an inputs file.
pub const FORMAT: &str = "lpzero-inputs";

/// Where one array lies in the data.
#[derive(Serialize, Deserialize)]
struct Slot {
    shape: Vec<usize>,
    offset: usize,
}

/// The JSON line of an inputs file.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u64,
    dtype: String,
    byteorder: String,
    lists: HashMap<String, Vec<Slot>>,
}

/// Writes the five input lists of `source` to `path` (atomically); a list the source does
/// not provide is written empty.
pub fn write(path: &Path, source: &dyn InputSource) -> Result<()> {
    let mut lists = HashMap::new();
    let mut data: Vec<u8> = Vec::new();
    let mut offset = 0;
    for input in Input::ALL {
        let list = source.input(input);
        let arrays: &[Array] = list.as_deref().unwrap_or(&[]);
        let mut slots = Vec::with_capacity(arrays.len());
        for a in arrays {
            slots.push(Slot {
                shape: a.shape().to_vec(),
                offset,
            });
            offset += a.len();
            data.extend(a.data().iter().flat_map(|x| x.to_le_bytes()));
        }
        lists.insert(input.name().to_string(), slots);
    }
    let header = Header {
        format: FORMAT.to_string(),
        version: 1,
        dtype: "float32".to_string(),
        byteorder: "little".to_string(),
        lists,
    };
    let mut out = serde_json::to_vec(&header)?;
    out.push(b'\n');
    out.extend(data);
    write_atomic(path, out)
}

/// Reads an inputs file written by [`write()`].
pub fn read(path: &Path) -> Result<HashMap<Input, Vec<Array>>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .with_context(|| format!("{}: no header line", path.display()))?;
    let header: Header = serde_json::from_slice(&bytes[..end]).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an lpzero inputs file ({})",
            path.display(),
            clip(&e.to_string())
        )
    })?;
    if header.format != FORMAT || header.dtype != "float32" || header.byteorder != "little" {
        bail!(
            "{}: expected format `{FORMAT}` with little-endian float32 values",
            path.display()
        );
    }
    let values: Vec<f32> = bytes[end + 1..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut out = HashMap::new();
    for input in Input::ALL {
        let slots = header
            .lists
            .get(input.name())
            .map_or(&[][..], Vec::as_slice);
        let mut arrays = Vec::with_capacity(slots.len());
        for slot in slots {
            let n: usize = slot.shape.iter().product();
            let Some(part) = values.get(slot.offset..slot.offset + n) else {
                bail!(
                    "{}: an array of `{}` reaches past the end of the data",
                    path.display(),
                    input
                );
            };
            arrays.push(Array::new(slot.shape.clone(), part.to_vec()).map_err(anyhow::Error::msg)?);
        }
        out.insert(input, arrays);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::eval::Inputs;

    #[test]
    fn round_trip() {
        let act = vec![
            Array::new(
                vec![2, 3],
                vec![1.0, -2.0, f32::NAN, 0.5, f32::INFINITY, -0.0],
            )
            .unwrap(),
            Array::scalar(3.25),
        ];
        let weight = vec![Array::new(vec![0], vec![]).unwrap()];
        let source = Inputs {
            act: &act,
            weight: &weight,
            ..Inputs::default()
        };
        let path = std::env::temp_dir().join(format!("lpzero-inputs-{}.bin", std::process::id()));
        write(&path, &source).unwrap();
        let back = read(&path).unwrap();
        let bits = |a: &[Array]| -> Vec<(Vec<usize>, Vec<u32>)> {
            a.iter()
                .map(|x| {
                    (
                        x.shape().to_vec(),
                        x.data().iter().map(|v| v.to_bits()).collect(),
                    )
                })
                .collect()
        };
        assert_eq!(bits(&back[&Input::Act]), bits(&act));
        assert_eq!(bits(&back[&Input::Weight]), bits(&weight));
        assert!(back[&Input::Grad].is_empty());
        let _ = std::fs::remove_file(&path);
    }
}
