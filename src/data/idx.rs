//! The IDX format of (Fashion-)MNIST: a magic number giving the element type
//! and the number of dimensions, the dimensions as big-endian u32, then the
//! data. Gzipped files (`.gz`) are read through flate2.

use std::io::Read;
use std::path::Path;

use super::DataError;

/// An IDX file of unsigned bytes.
#[derive(Debug, Clone)]
pub struct Idx {
    /// The dimensions.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
    /// Bytes before the data (for error offsets).
    pub header_len: usize,
}

/// Reads an IDX file of unsigned bytes, gzipped or not.
pub fn read_idx(path: &Path) -> Result<Idx, DataError> {
    let err = |offset: Option<u64>, message: String| DataError { file: path.to_owned(), offset, message };
    let raw = std::fs::read(path).map_err(|e| err(None, format!("cannot read: {e}")))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| err(None, format!("not a valid gzip file: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|(offset, message)| err(Some(offset), message))
}

fn parse_idx(bytes: &[u8]) -> Result<Idx, (u64, String)> {
    if bytes.len() < 4 {
        return Err((0, format!("file is {} bytes: expected a 4-byte IDX magic number", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err((0, "expected an IDX magic number starting with two zero bytes".into()));
    }
    if bytes[2] != 0x08 {
        return Err((2, format!("element type 0x{:02x}: expected 0x08 (unsigned byte)", bytes[2])));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err((3, "expected at least one dimension".into()));
    }
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err((bytes.len() as u64, format!("file ends inside the header: expected {ndims} dimension sizes")));
    }
    let dims: Vec<usize> =
        bytes[4..header_len].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
    let expected =
        dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or((4, "dimensions overflow".to_string()))?;
    let have = bytes.len() - header_len;
    if have != expected {
        return Err((
            (header_len + have.min(expected)) as u64,
            format!("expected {expected} data bytes for dimensions {dims:?}, found {have}"),
        ));
    }
    Ok(Idx { dims, data: bytes[header_len..].to_vec(), header_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn reads_a_small_file() {
        let f = parse_idx(&idx(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(f.dims, [2, 3]);
        assert_eq!(f.data, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn errors_name_the_offset() {
        assert_eq!(parse_idx(&idx(&[2, 3], &[1, 2, 3])).unwrap_err().0, 15);
        assert_eq!(parse_idx(&[0, 0, 9, 1]).unwrap_err().0, 2);
        assert_eq!(parse_idx(&[1]).unwrap_err().0, 0);
    }
}
