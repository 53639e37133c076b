//! NumPy files: `.npy` (one array) and `.npz` (a zip of `.npy` arrays).
//! Samples may be any little-endian integer or float type and any shape
//! after the first axis (flattened per sample); labels are integers, one per
//! sample. Fortran order and big-endian data are refused with the reason.
//!
//! The header (a Python dict literal) is parsed properly, and the size it
//! declares is checked against [`super::MAX_VALUES`] and against the bytes
//! the file (or the archive entry) holds before the data is read; an entry
//! that inflates past its declared size is an error.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::source::{FilePair, KeyError, Source, SourceData, SourceKeys, SourceKind};
use super::{read_full, DataError, Values, MAX_VALUES};

/// The longest `.npy` header read (NumPy writes well under a kilobyte).
const MAX_HEADER: usize = 1 << 20;

/// An element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dtype {
    F4,
    F8,
    I1,
    U1,
    I2,
    U2,
    I4,
    U4,
    I8,
    U8,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Self> {
        Some(match descr {
            "<f4" => Dtype::F4,
            "<f8" => Dtype::F8,
            "|u1" | "<u1" | "|b1" => Dtype::U1,
            "|i1" | "<i1" => Dtype::I1,
            "<i2" => Dtype::I2,
            "<u2" => Dtype::U2,
            "<i4" => Dtype::I4,
            "<u4" => Dtype::U4,
            "<i8" => Dtype::I8,
            "<u8" => Dtype::U8,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::I1 | Dtype::U1 => 1,
            Dtype::I2 | Dtype::U2 => 2,
            Dtype::F4 | Dtype::I4 | Dtype::U4 => 4,
            Dtype::F8 | Dtype::I8 | Dtype::U8 => 8,
        }
    }
}

/// One array: its shape, element type and raw little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Array {
    pub(super) shape: Vec<usize>,
    dtype: Dtype,
    data: Vec<u8>,
}

impl Array {
    /// Each element as f32.
    pub(super) fn floats(&self) -> Vec<f32> {
        let c = self.data.chunks_exact(self.dtype.size());
        let le = |b: &[u8]| -> [u8; 8] {
            let mut a = [0u8; 8];
            a[..b.len()].copy_from_slice(b);
            a
        };
        match self.dtype {
            Dtype::F4 => c.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F8 => c.map(|b| f64::from_le_bytes(le(b)) as f32).collect(),
            Dtype::I1 => c.map(|b| f32::from(b[0] as i8)).collect(),
            Dtype::U1 => c.map(|b| f32::from(b[0])).collect(),
            Dtype::I2 => c.map(|b| f32::from(i16::from_le_bytes([b[0], b[1]]))).collect(),
            Dtype::U2 => c.map(|b| f32::from(u16::from_le_bytes([b[0], b[1]]))).collect(),
            Dtype::I4 => c.map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32).collect(),
            Dtype::U4 => c.map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32).collect(),
            Dtype::I8 => c.map(|b| i64::from_le_bytes(le(b)) as f32).collect(),
            Dtype::U8 => c.map(|b| u64::from_le_bytes(le(b)) as f32).collect(),
        }
    }

    /// Each element as i64 (integer types only; u64 beyond i64 saturates).
    pub(super) fn ints(&self) -> Option<Vec<i64>> {
        let c = self.data.chunks_exact(self.dtype.size());
        let le = |b: &[u8]| -> [u8; 8] {
            let mut a = [0u8; 8];
            a[..b.len()].copy_from_slice(b);
            a
        };
        Some(match self.dtype {
            Dtype::F4 | Dtype::F8 => return None,
            Dtype::I1 => c.map(|b| i64::from(b[0] as i8)).collect(),
            Dtype::U1 => c.map(|b| i64::from(b[0])).collect(),
            Dtype::I2 => c.map(|b| i64::from(i16::from_le_bytes([b[0], b[1]]))).collect(),
            Dtype::U2 => c.map(|b| i64::from(u16::from_le_bytes([b[0], b[1]]))).collect(),
            Dtype::I4 => c.map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect(),
            Dtype::U4 => c.map(|b| i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect(),
            Dtype::I8 => c.map(|b| i64::from_le_bytes(le(b))).collect(),
            Dtype::U8 => c.map(|b| i64::try_from(u64::from_le_bytes(le(b))).unwrap_or(i64::MAX)).collect(),
        })
    }
}

/// `[data] source = "npy"`: two `.npy` files, samples (any shape after the first axis) and labels.
pub(super) const NPY: SourceKind = SourceKind {
    name: "npy",
    keys: &["x", "y"],
    take: |keys| FilePair::take(NPY.name, keys, |x, y| pair(read_file(x)?, read_file(y)?, x, y)),
};

/// `[data] source = "npz"`.
pub(super) const NPZ: SourceKind = SourceKind {
    name: "npz",
    keys: &["path", "x", "y"],
    take: |keys| {
        let path = SourceKeys::require(&mut keys.path, "path", "this source needs the file's path")?;
        let name =
            |p: Option<PathBuf>, default: &str| p.map_or(default.to_owned(), |p| p.to_string_lossy().into_owned());
        Ok(Box::new(NpzFile { path, x: name(keys.x.take(), "x"), y: name(keys.y.take(), "y") }))
    },
};

/// A `.npz` archive holding a samples and a labels array.
#[derive(Debug, Clone)]
pub struct NpzFile {
    /// The archive.
    pub path: PathBuf,
    /// The samples array's name.
    pub x: String,
    /// The labels array's name.
    pub y: String,
}

impl NpzFile {
    /// An array of the archive, as messages name it.
    fn entry(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("{}[{name}]", self.path.display()))
    }
}

impl Source for NpzFile {
    fn name(&self) -> &'static str {
        NPZ.name
    }

    fn resolve_paths(&mut self, base: &Path) {
        // An absolute path stays as it is: `join` replaces the base with it.
        self.path = base.join(&self.path);
    }

    fn check_files(&self) -> Result<(), KeyError> {
        super::check_file("data.path", &self.path)
    }

    fn samples_file(&self) -> PathBuf {
        self.entry(&self.x)
    }

    fn labels_file(&self) -> PathBuf {
        self.entry(&self.y)
    }

    fn read(&self, _seed: u64) -> Result<SourceData, DataError> {
        let (xs, ys) = read_npz(&self.path, &self.x, &self.y)?;
        pair(xs, ys, &self.samples_file(), &self.labels_file())
    }

    fn boxed(&self) -> Box<dyn Source> {
        Box::new(self.clone())
    }
}

/// Samples and labels from two arrays, checked against each other.
fn pair(xs: Array, ys: Array, x_file: &Path, y_file: &Path) -> Result<SourceData, DataError> {
    let rows = *xs.shape.first().ok_or_else(|| err(x_file, None, "a 0-dimensional array: expected samples".into()))?;
    if ys.shape != [rows] {
        return Err(err(y_file, None, format!("shape {:?}: expected ({rows},), one label per sample", ys.shape)));
    }
    let y = ys.ints().ok_or_else(|| err(y_file, None, "floating-point labels: expected an integer type".into()))?;
    let x = xs.floats();
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(err(x_file, None, format!("value {} at flat index {i}: expected finite numbers", x[i])));
    }
    let classes = super::classes_of(&y, y_file)?;
    Ok(SourceData {
        x: Values::Floats(x),
        y,
        dims: xs.shape[1..].to_vec(),
        classes,
        class_names: None,
        feature_names: None,
    })
}

fn err(file: &Path, offset: Option<u64>, message: String) -> DataError {
    DataError { file: file.to_owned(), offset, message }
}

/// Reads an `.npy` file, checking its header against the file's size first.
fn read_file(path: &Path) -> Result<Array, DataError> {
    let cannot = |e: std::io::Error| err(path, None, format!("cannot read: {e}"));
    let file = crate::files::open(path).map_err(cannot)?;
    let len = file.metadata().map_err(cannot)?.len();
    read_array(BufReader::new(file), Some(len)).map_err(|(o, m)| err(path, Some(o), m))
}

fn read_npz(path: &Path, x: &str, y: &str) -> Result<(Array, Array), DataError> {
    let file = crate::files::open(path).map_err(|e| err(path, None, format!("cannot read: {e}")))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| err(path, None, format!("not a valid .npz (zip) file: {e}")))?;
    let mut get = |name: &str| -> Result<Array, DataError> {
        let entry = zip.by_name(&format!("{name}.npy")).map_err(|_| {
            err(path, None, format!("no array `{name}` in the archive; set data.x / data.y to the arrays' names"))
        })?;
        let declared = entry.size();
        read_array(entry, Some(declared)).map_err(|(o, m)| err(path, None, format!("array `{name}` at byte {o}: {m}")))
    };
    Ok((get(x)?, get(y)?))
}

/// Reads an `.npy` stream. `size` is the length the file (or the archive's
/// directory) says the stream has: the data the header declares must fit
/// it before anything is read, and the stream must not run past it.
pub(super) fn read_array(mut reader: impl Read, size: Option<u64>) -> Result<Array, (u64, String)> {
    let io = |at: u64| move |e: std::io::Error| (at, format!("cannot read: {e}"));
    let mut lead = [0u8; 12];
    let got = read_full(&mut reader, &mut lead[..10]).map_err(io(0))?;
    if got < 10 || !lead.starts_with(b"\x93NUMPY") {
        return Err((0, "expected the .npy magic \\x93NUMPY".into()));
    }
    let (header_len, start) = match lead[6] {
        1 => (usize::from(u16::from_le_bytes([lead[8], lead[9]])), 10),
        2 | 3 => {
            if read_full(&mut reader, &mut lead[10..12]).map_err(io(10))? < 2 {
                return Err((10, "the file ends inside the header length".into()));
            }
            (u32::from_le_bytes([lead[8], lead[9], lead[10], lead[11]]) as usize, 12)
        }
        v => return Err((6, format!(".npy version {v}: expected 1, 2 or 3"))),
    };
    if header_len > MAX_HEADER || size.is_some_and(|s| (start + header_len) as u64 > s) {
        return Err((8, format!("header length {header_len}: longer than the file or {MAX_HEADER} bytes")));
    }
    let mut header = vec![0u8; header_len];
    if read_full(&mut reader, &mut header).map_err(io(start as u64))? < header_len {
        return Err((start as u64, format!("the file ends inside its {header_len}-byte header")));
    }
    let header = std::str::from_utf8(&header).map_err(|e| {
        (start as u64 + e.valid_up_to() as u64, "the header is not text: expected a Python dict literal".to_owned())
    })?;
    let h = Header::parse(header, start as u64)?;
    let dtype = Dtype::parse(&h.descr).ok_or_else(|| {
        (
            h.descr_at,
            format!(
                "element type '{}': expected little-endian int8..int64, uint8..uint64, float32 or float64",
                h.descr
            ),
        )
    })?;
    if h.fortran_order {
        return Err((h.fortran_at, "Fortran-ordered array: expected C order (np.ascontiguousarray)".into()));
    }
    let data_at = (start + header_len) as u64;
    let count =
        h.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_VALUES).ok_or_else(|| {
            (
                h.shape_at,
                format!("shape {:?} declares more than {MAX_VALUES} values, the most a data set may have", h.shape),
            )
        })?;
    let bytes = count * dtype.size();
    let mismatch = |have: String| {
        (data_at, format!("expected {bytes} data bytes for shape {:?} of '{}', found {have}", h.shape, h.descr))
    };
    if let Some(size) = size {
        if size - data_at != bytes as u64 {
            return Err(mismatch((size - data_at).to_string()));
        }
    }
    // One more than declared, to notice a stream that runs past it.
    let mut data = Vec::new();
    reader.take(bytes as u64 + 1).read_to_end(&mut data).map_err(io(data_at))?;
    if data.len() != bytes {
        return Err(mismatch(if data.len() > bytes { "more".into() } else { data.len().to_string() }));
    }
    Ok(Array { shape: h.shape, dtype, data })
}

/// The header's dict: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`,
/// with the byte offset of each value (for errors).
#[derive(Debug)]
struct Header {
    descr: String,
    descr_at: u64,
    fortran_order: bool,
    fortran_at: u64,
    shape: Vec<usize>,
    shape_at: u64,
}

/// A value of the header's dict.
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl Header {
    /// Parses the dict literal; `base` is the header's offset in the file.
    fn parse(text: &str, base: u64) -> Result<Header, (u64, String)> {
        let mut p = Parser { text: text.as_bytes(), at: 0, base };
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        p.skip_space();
        p.expect(b'{', "the header to start a Python dict with '{'")?;
        loop {
            p.skip_space();
            if p.eat(b'}') {
                break;
            }
            let key_at = p.offset();
            let Value::Str(key) = p.value()? else {
                return Err((key_at, "expected a quoted key in the header's dict".into()));
            };
            p.skip_space();
            p.expect(b':', "':' after a key of the header's dict")?;
            p.skip_space();
            let at = p.offset();
            let value = p.value()?;
            match (key.as_str(), value) {
                ("descr", Value::Str(s)) => descr = Some((s, at)),
                ("fortran_order", Value::Bool(b)) => fortran = Some((b, at)),
                ("shape", Value::Tuple(t)) => shape = Some((t, at)),
                ("descr", _) => return Err((at, "'descr' must be a quoted type such as '<f4'".into())),
                ("fortran_order", _) => return Err((at, "'fortran_order' must be True or False".into())),
                ("shape", _) => return Err((at, "'shape' must be a tuple of integers such as (60000, 784)".into())),
                _ => {}
            }
            p.skip_space();
            if p.eat(b',') {
                continue;
            }
            p.skip_space();
            if p.eat(b'}') {
                break;
            }
            return Err(p.error("',' or '}' in the header's dict (it is not closed)"));
        }
        let missing =
            |key: &str| (base, format!("the header has no '{key}': expected 'descr', 'fortran_order' and 'shape'"));
        let (descr, descr_at) = descr.ok_or_else(|| missing("descr"))?;
        let (fortran_order, fortran_at) = fortran.ok_or_else(|| missing("fortran_order"))?;
        let (shape, shape_at) = shape.ok_or_else(|| missing("shape"))?;
        Ok(Header { descr, descr_at, fortran_order, fortran_at, shape, shape_at })
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    base: u64,
}

impl Parser<'_> {
    fn offset(&self) -> u64 {
        self.base + self.at as u64
    }

    fn error(&self, expected: &str) -> (u64, String) {
        let found = match self.text.get(self.at) {
            None => "the end of the header".to_owned(),
            Some(c) => format!("`{}`", char::from(*c)),
        };
        (self.offset(), format!("expected {expected}, found {found}"))
    }

    fn skip_space(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let yes = self.text.get(self.at) == Some(&c);
        self.at += usize::from(yes);
        yes
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), (u64, String)> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn value(&mut self) -> Result<Value, (u64, String)> {
        match self.text.get(self.at) {
            Some(&q @ (b'\'' | b'"')) => {
                let start = self.at + 1;
                let len = self.text[start..]
                    .iter()
                    .position(|&c| c == q)
                    .ok_or_else(|| (self.base + self.at as u64, "a string in the header is not closed".to_owned()))?;
                self.at = start + len + 1;
                Ok(Value::Str(String::from_utf8_lossy(&self.text[start..start + len]).into_owned()))
            }
            Some(b'(') => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_space();
                    if self.eat(b')') {
                        return Ok(Value::Tuple(items));
                    }
                    let start = self.at;
                    while self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
                        self.at += 1;
                    }
                    let digits = std::str::from_utf8(&self.text[start..self.at]).unwrap_or_default();
                    let n = digits.parse::<usize>().map_err(|_| {
                        self.at = start;
                        self.error("a dimension (a non-negative integer) in 'shape'")
                    })?;
                    items.push(n);
                    self.skip_space();
                    if !self.eat(b',') {
                        self.skip_space();
                        self.expect(b')', "',' or ')' in 'shape'")?;
                        return Ok(Value::Tuple(items));
                    }
                }
            }
            _ => {
                for (word, v) in [("True", true), ("False", false)] {
                    if self.text[self.at..].starts_with(word.as_bytes()) {
                        self.at += word.len();
                        return Ok(Value::Bool(v));
                    }
                }
                Err(self.error("a string, True, False or a tuple"))
            }
        }
    }
}

/// Samples from one `.npy` file, as f32, with one sample's dimensions.
pub fn read_samples(path: &Path) -> Result<(Vec<f32>, Vec<usize>), DataError> {
    let a = read_file(path)?;
    if a.shape.is_empty() {
        return Err(err(path, None, "a 0-dimensional array: expected samples".into()));
    }
    Ok((a.floats(), a.shape[1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_with(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        npy_with(&header, data)
    }

    fn parse(bytes: &[u8]) -> Result<Array, (u64, String)> {
        read_array(bytes, Some(bytes.len() as u64))
    }

    #[test]
    fn reads_floats_and_ints_of_any_shape() {
        let data: Vec<u8> = [1.5f32, -2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse(&npy("<f4", "(2, 2)", &data)).unwrap();
        assert_eq!((a.shape.clone(), a.floats(), a.ints()), (vec![2, 2], vec![1.5, -2.0, 3.0, 4.0], None));
        let data: Vec<u8> = [2i64, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse(&npy("<i8", "(3,)", &data)).unwrap();
        assert_eq!((a.shape.clone(), a.ints()), (vec![3], Some(vec![2, 0, 1])));
        let a = parse(&npy_with("{\"shape\": (), \"descr\": \"|u1\", \"fortran_order\": False}", &[7])).unwrap();
        assert_eq!((a.shape.clone(), a.ints()), (vec![], Some(vec![7])), "any key order, double quotes, scalars");
    }

    #[test]
    fn refuses_what_it_cannot_read_with_the_offset() {
        assert_eq!(parse(b"PK\x03\x04").unwrap_err().0, 0);
        let e = parse(&npy(">f4", "(1,)", &[0; 4])).unwrap_err();
        assert!(e.1.contains("'>f4'"), "{e:?}");
        assert_eq!(e.0, 20, "the offset of the descr value");
        let short = npy("<f4", "(2, 2)", &[0; 12]);
        let e = parse(&short).unwrap_err();
        assert_eq!(e.0, (short.len() - 12) as u64, "the offset of the data");
        assert!(e.1.contains("expected 16 data bytes"), "{e:?}");
        let mut fortran = npy("<f4", "(1,)", &[0; 4]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(parse(&fortran).unwrap_err().1.contains("Fortran"));
    }

    #[test]
    fn malformed_headers_are_errors_with_the_offset() {
        let cases = [
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", "not closed", 10 + 54),
            ("{'descr': '<f4', 'fortran_order': False}", "no 'shape'", 10),
            ("{'fortran_order': False, 'shape': (1,)}", "no 'descr'", 10),
            ("{'descr': '<f4', 'shape': (1,)}", "no 'fortran_order'", 10),
            ("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,)}", "True, False", 10 + 34),
            ("{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}", "',' or '}'", 10 + 17),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1, -2)}", "a dimension", 10 + 54),
            ("'descr': '<f4'", "start a Python dict", 10),
            ("{'descr': 4, 'fortran_order': False, 'shape': (1,)}", "a string, True, False", 20),
        ];
        for (header, phrase, offset) in cases {
            let e = parse(&npy_with(header, &[0; 4])).unwrap_err();
            assert!(e.1.contains(phrase), "{header}: {e:?}");
            assert_eq!(e.0, offset, "{header}: {e:?}");
        }
    }

    #[test]
    fn declared_sizes_are_bounded_before_anything_is_read() {
        let e = parse(&npy("<f4", "(100000, 100000, 100000)", &[0; 4])).unwrap_err();
        assert!(e.1.contains("more than"), "{e:?}");
        let e = parse(&npy("<f4", "(30000, 30000)", &[0; 4])).unwrap_err();
        assert!(e.1.contains("expected 3600000000 data bytes") && e.1.contains("found 4"), "{e:?}");
        // A stream that runs past its declared size (an archive entry that lies).
        let long = npy("<f4", "(1,)", &[0; 4096]);
        let e = read_array(&long[..], None).unwrap_err();
        assert!(e.1.contains("found more"), "{e:?}");
        let e = read_array(&npy_with(&"x".repeat(60000), &[])[..], Some(70000)).unwrap_err();
        assert!(e.1.contains("start a Python dict"), "{e:?}");
    }
}
