//! NumPy files: `.npy` (one array) and `.npz` (a zip of `.npy` arrays).
//! Samples may be any little-endian integer or float type and any shape
//! after the first axis (flattened per sample); labels are integers, one per
//! sample. Fortran order and big-endian data are refused with the reason.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::DataError;
use crate::config::{DataConfig, DataSource};

/// One array: its shape and its values as f64.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Array {
    pub(super) shape: Vec<usize>,
    pub(super) values: Vec<f64>,
    /// Whether its type is an integer type.
    pub(super) integer: bool,
}

/// Loads the samples and labels `[data]` names: (x, y, a sample's
/// dimensions, the labels' file).
pub(super) fn load(d: &DataConfig) -> Result<(super::Samples, PathBuf), DataError> {
    let (xs, ys, x_file, y_file) = match d.source {
        DataSource::Npz => {
            let path = d.path.clone().unwrap_or_default();
            let name = |p: &Option<PathBuf>, default: &str| {
                p.as_ref().map_or(default.to_owned(), |p| p.to_string_lossy().into_owned())
            };
            let (xn, yn) = (name(&d.x, "x"), name(&d.y, "y"));
            let (xs, ys) = read_npz(&path, &xn, &yn)?;
            let label = |n: &str| PathBuf::from(format!("{}[{n}]", path.display()));
            (xs, ys, label(&xn), label(&yn))
        }
        _ => {
            let (xf, yf) = (d.x.clone().unwrap_or_default(), d.y.clone().unwrap_or_default());
            let xs = parse(&read(&xf)?).map_err(|(o, m)| err(&xf, Some(o), m))?;
            let ys = parse(&read(&yf)?).map_err(|(o, m)| err(&yf, Some(o), m))?;
            (xs, ys, xf, yf)
        }
    };
    let rows = *xs.shape.first().ok_or_else(|| err(&x_file, None, "a 0-dimensional array: expected samples".into()))?;
    if ys.shape != [rows] {
        return Err(err(&y_file, None, format!("shape {:?}: expected ({rows},), one label per sample", ys.shape)));
    }
    if !ys.integer {
        return Err(err(&y_file, None, "floating-point labels: expected an integer type".into()));
    }
    if let Some(i) = ys.values.iter().position(|&v| v < 0.0) {
        return Err(err(&y_file, None, format!("label {} at index {i}: expected 0 or more", ys.values[i])));
    }
    if let Some(i) = xs.values.iter().position(|v| !v.is_finite()) {
        return Err(err(&x_file, None, format!("value {} at flat index {i}: expected finite numbers", xs.values[i])));
    }
    let x = xs.values.iter().map(|&v| v as f32).collect();
    let y = ys.values.iter().map(|&v| v as i64).collect();
    Ok(((x, y, xs.shape[1..].to_vec()), y_file))
}

fn err(file: &Path, offset: Option<u64>, message: String) -> DataError {
    DataError { file: file.to_owned(), offset, message }
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| err(path, None, format!("cannot read: {e}")))
}

fn read_npz(path: &Path, x: &str, y: &str) -> Result<(Array, Array), DataError> {
    let file = std::fs::File::open(path).map_err(|e| err(path, None, format!("cannot read: {e}")))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| err(path, None, format!("not a valid .npz (zip) file: {e}")))?;
    let mut get = |name: &str| -> Result<Array, DataError> {
        let mut entry = zip.by_name(&format!("{name}.npy")).map_err(|_| {
            err(path, None, format!("no array `{name}` in the archive; set data.x / data.y to the arrays' names"))
        })?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| err(path, None, format!("array `{name}`: {e}")))?;
        parse(&bytes).map_err(|(o, m)| err(path, None, format!("array `{name}` at byte {o}: {m}")))
    };
    Ok((get(x)?, get(y)?))
}

/// Parses an `.npy` file: magic, version, header dict, then the data.
pub(super) fn parse(bytes: &[u8]) -> Result<Array, (u64, String)> {
    if !bytes.starts_with(b"\x93NUMPY") || bytes.len() < 10 {
        return Err((0, "expected the .npy magic \\x93NUMPY".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err((6, format!(".npy version {v}: expected 1, 2 or 3"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or((start as u64, format!("expected a {header_len}-byte text header")))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\'')?.split('\'').next())
        .ok_or((start as u64, "no 'descr' in the header".to_string()))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err((start as u64, "Fortran-ordered array: expected C order (np.ascontiguousarray)".into()));
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('(')?.split(')').next())
        .ok_or((start as u64, "no 'shape' in the header".to_string()))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| (start as u64, format!("shape ({shape_text}): expected integers")))?;
    let (size, integer): (usize, bool) = match descr {
        "<f4" => (4, false),
        "<f8" => (8, false),
        "|u1" | "<u1" | "|i1" | "<i1" | "|b1" => (1, true),
        "<i2" | "<u2" => (2, true),
        "<i4" | "<u4" => (4, true),
        "<i8" | "<u8" => (8, true),
        other => {
            return Err((
                start as u64,
                format!(
                    "element type '{other}': expected little-endian int8..int64, uint8..uint64, float32 or float64"
                ),
            ))
        }
    };
    let data_at = start + header_len;
    let count =
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or((start as u64, "shape overflows".into()))?;
    let have = bytes.len() - data_at;
    if have != count * size {
        return Err((
            data_at as u64,
            format!("expected {} data bytes for shape {shape:?} of '{descr}', found {have}", count * size),
        ));
    }
    let data = &bytes[data_at..];
    let values = data
        .chunks_exact(size)
        .map(|c| match descr {
            "<f4" => f64::from(f32::from_le_bytes(c.try_into().unwrap())),
            "<f8" => f64::from_le_bytes(c.try_into().unwrap()),
            "|i1" | "<i1" => f64::from(c[0] as i8),
            "<i2" => f64::from(i16::from_le_bytes(c.try_into().unwrap())),
            "<u2" => f64::from(u16::from_le_bytes(c.try_into().unwrap())),
            "<i4" => f64::from(i32::from_le_bytes(c.try_into().unwrap())),
            "<u4" => f64::from(u32::from_le_bytes(c.try_into().unwrap())),
            "<i8" => i64::from_le_bytes(c.try_into().unwrap()) as f64,
            "<u8" => u64::from_le_bytes(c.try_into().unwrap()) as f64,
            _ => f64::from(c[0]),
        })
        .collect();
    Ok(Array { shape, values, integer })
}

/// Samples from one `.npy` file, as f32, with one sample's dimensions.
pub fn read_samples(path: &Path) -> Result<(Vec<f32>, Vec<usize>), DataError> {
    let a = parse(&read(path)?).map_err(|(o, m)| err(path, Some(o), m))?;
    if a.shape.is_empty() {
        return Err(err(path, None, "a 0-dimensional array: expected samples".into()));
    }
    Ok((a.values.iter().map(|&v| v as f32).collect(), a.shape[1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn reads_floats_and_ints_of_any_shape() {
        let data: Vec<u8> = [1.5f32, -2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse(&npy("<f4", "(2, 2)", &data)).unwrap();
        assert_eq!((a.shape, a.values, a.integer), (vec![2, 2], vec![1.5, -2.0, 3.0, 4.0], false));
        let data: Vec<u8> = [2i64, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse(&npy("<i8", "(3,)", &data)).unwrap();
        assert_eq!((a.shape, a.values, a.integer), (vec![3], vec![2.0, 0.0, 1.0], true));
    }

    #[test]
    fn refuses_what_it_cannot_read_with_the_offset() {
        assert_eq!(parse(b"PK\x03\x04").unwrap_err().0, 0);
        let e = parse(&npy(">f4", "(1,)", &[0; 4])).unwrap_err();
        assert!(e.1.contains("'>f4'"), "{e:?}");
        let short = npy("<f4", "(2, 2)", &[0; 12]);
        let e = parse(&short).unwrap_err();
        assert_eq!(e.0, (short.len() - 12) as u64, "the offset of the data");
        assert!(e.1.contains("expected 16 data bytes"), "{e:?}");
        let mut fortran = npy("<f4", "(1,)", &[0; 4]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(parse(&fortran).unwrap_err().1.contains("Fortran"));
    }
}
