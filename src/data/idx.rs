//! The IDX format of (Fashion-)MNIST: a magic number giving the element type
//! and the number of dimensions, the dimensions as big-endian u32, then the
//! data. Gzipped files (`.gz`) are read through flate2.
//!
//! The header is read first and what it declares is checked before any
//! data is held: against [`super::MAX_VALUES`], against the bytes the file
//! has (or, gzipped, the most deflate can inflate them to), and while the
//! data is read, against inflating past it.

use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use super::source::{self, FilePair, KeyError, Known, Source, SourceKind};
use super::{read_full, DataError, FASHION_CLASSES, FASHION_FILES, FASHION_MNIST_DIR, MAX_VALUES};

/// `[data] source = "fashion-mnist"`.
pub(super) const FASHION_MNIST: SourceKind = SourceKind {
    name: "fashion-mnist",
    keys: &["path"],
    take: |keys| Ok(Box::new(FashionMnist { dir: keys.path.take() })),
};

/// `[data] source = "idx"`: a pair of IDX files (samples, labels), gzipped or not.
pub(super) const SOURCE: SourceKind =
    SourceKind { name: "idx", keys: &["x", "y"], take: |keys| FilePair::take(SOURCE.name, keys, read_pair) };

/// Zalando's Fashion-MNIST as gzipped IDX files.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    /// The directory of its files; `None`: Debian's `dataset-fashion-mnist`.
    pub dir: Option<PathBuf>,
}

impl FashionMnist {
    /// The directory of its files.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| PathBuf::from(FASHION_MNIST_DIR))
    }
}

impl Source for FashionMnist {
    fn name(&self) -> &'static str {
        FASHION_MNIST.name
    }

    fn resolve_paths(&mut self, base: &Path) {
        // An absolute path stays as it is: `join` replaces the base with it.
        if let Some(d) = &mut self.dir {
            *d = base.join(&*d);
        }
    }

    fn check_files(&self) -> Result<(), KeyError> {
        let dir = self.dir();
        match FASHION_FILES.iter().find(|name| !dir.join(name).is_file()) {
            None => Ok(()),
            Some(name) => {
                let hint =
                    if self.dir.is_none() { " (install Debian's dataset-fashion-mnist, or set data.path)" } else { "" };
                Err((
                    "data.path".into(),
                    format!(
                        "{} does not exist; expected the Fashion-MNIST file {name} in {}{hint}",
                        dir.join(name).display(),
                        dir.display()
                    ),
                ))
            }
        }
    }

    fn known(&self) -> Option<Known> {
        Some(Known { samples: 60_000, features: 784, image: Some([1, 28, 28]), classes: 10 })
    }

    fn samples_file(&self) -> PathBuf {
        self.dir().join(FASHION_FILES[0])
    }

    fn labels_file(&self) -> PathBuf {
        self.dir().join(FASHION_FILES[1])
    }

    fn read(&self, _seed: u64) -> Result<source::SourceData, DataError> {
        let (x, y, dims) = super::load_idx_pair(&self.samples_file(), &self.labels_file(), Some(10))?;
        if y.len() < 2 {
            return Err(super::too_few_samples(y.len(), &self.labels_file()));
        }
        let class_names = Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect());
        Ok(source::SourceData { x, y, dims, classes: 10, class_names, feature_names: None })
    }

    fn boxed(&self) -> Box<dyn Source> {
        Box::new(self.clone())
    }
}

/// Samples and labels from a pair of IDX files.
fn read_pair(x: &Path, y: &Path) -> Result<source::SourceData, DataError> {
    let (samples, labels, dims) = super::load_idx_pair(x, y, None)?;
    let classes = super::classes_of(&labels, y)?;
    Ok(source::SourceData { x: samples, y: labels, dims, classes, class_names: None, feature_names: None })
}

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

/// The most deflate inflates a byte to (its format's limit is about 1032:1).
const MAX_INFLATION: u64 = 1032;

/// Reads an IDX file of unsigned bytes, gzipped or not.
pub fn read_idx(path: &Path) -> Result<Idx, DataError> {
    let err = |offset: Option<u64>, message: String| DataError { file: path.to_owned(), offset, message };
    let cannot = |e: std::io::Error| err(None, format!("cannot read: {e}"));
    let mut file = crate::files::open(path).map_err(cannot)?;
    let on_disk = file.metadata().map_err(cannot)?.len();
    let mut magic = [0u8; 2];
    let gzipped = file.read(&mut magic).map_err(cannot)? == 2 && magic == [0x1f, 0x8b];
    file.rewind().map_err(cannot)?;
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let gz_err = |e: std::io::Error| err(None, format!("not a valid gzip file: {e}"));
    let mut reader = reader.take(u64::MAX);
    let mut head = [0u8; 4];
    let got = read_full(&mut reader, &mut head).map_err(gz_err)?;
    let ndims = usize::from(head[3]);
    let mut header = head[..got].to_vec();
    if got == 4 {
        header.resize(4 + 4 * ndims, 0);
        let more = read_full(&mut reader, &mut header[4..]).map_err(gz_err)?;
        header.truncate(4 + more);
    }
    let (dims, header_len, expected) = parse_header(&header).map_err(|(o, m)| err(Some(o), m))?;
    let within = if gzipped { on_disk.saturating_mul(MAX_INFLATION) } else { on_disk - header_len as u64 };
    if expected as u64 > within {
        let holds = if gzipped {
            format!("a gzipped file of {on_disk} bytes inflates to at most {within}")
        } else {
            format!("the file has {within} data bytes")
        };
        return Err(err(
            Some((header_len as u64).min(on_disk)),
            format!("dimensions {dims:?} declare {expected} data bytes, but {holds}"),
        ));
    }
    // One more than declared, to notice data past the end.
    reader.set_limit(expected as u64 + 1);
    // The size is known: no doubling (a plain file holds it; a gzipped one
    // may still lie, so it grows from what its size makes likely).
    let likely = if gzipped { expected.min(on_disk.saturating_mul(8) as usize) } else { expected };
    let mut data = Vec::with_capacity(likely + usize::from(!gzipped));
    reader.read_to_end(&mut data).map_err(gz_err)?;
    if data.len() != expected {
        let found = if data.len() > expected { "more".to_owned() } else { data.len().to_string() };
        return Err(err(
            Some((header_len + data.len().min(expected)) as u64),
            format!("expected {expected} data bytes for dimensions {dims:?}, found {found}"),
        ));
    }
    Ok(Idx { dims, data, header_len })
}

/// The dimensions, the header's length and the data bytes it declares,
/// from the header's bytes (all of it, or as much as the file has).
fn parse_header(bytes: &[u8]) -> Result<(Vec<usize>, usize, usize), (u64, String)> {
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
        dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_VALUES).ok_or_else(|| {
            (4, format!("dimensions {dims:?} declare more than {MAX_VALUES} values, the most a data set may have"))
        })?;
    Ok((dims, header_len, expected))
}

#[cfg(test)]
fn parse_idx(bytes: &[u8]) -> Result<Idx, (u64, String)> {
    let (dims, header_len, expected) = parse_header(bytes)?;
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
    use std::io::Write;

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

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn declared_sizes_are_checked_before_reading_the_data() {
        let dir = tempfile::tempdir().unwrap();
        // 60000 x 60000 x 60000 bytes: an overflow of any sane bound.
        let huge = dir.path().join("huge.idx");
        std::fs::write(&huge, idx(&[60000, 60000, 60000], &[0; 16])).unwrap();
        let e = read_idx(&huge).unwrap_err();
        assert_eq!(e.offset, Some(4));
        assert!(e.message.contains("more than"), "{e}");
        // 30000 x 30000 = 9e8 values declared by a 24-byte file.
        let lying = dir.path().join("lying.idx");
        std::fs::write(&lying, idx(&[30000, 30000], &[0; 12])).unwrap();
        let e = read_idx(&lying).unwrap_err();
        assert!(e.message.contains("the file has 12 data bytes"), "{e}");
        // The same, gzipped: a few dozen bytes cannot inflate to 9e8.
        let lying_gz = dir.path().join("lying.idx.gz");
        std::fs::write(&lying_gz, gz(&idx(&[30000, 30000], &[0; 12]))).unwrap();
        let e = read_idx(&lying_gz).unwrap_err();
        assert!(e.message.contains("inflates to at most"), "{e}");
        // A gzipped file that inflates past what its header declares.
        let bomb = dir.path().join("bomb.idx.gz");
        std::fs::write(&bomb, gz(&idx(&[2, 2], &vec![0; 1 << 20]))).unwrap();
        let e = read_idx(&bomb).unwrap_err();
        assert!(e.message.contains("found more"), "{e}");
        assert_eq!(e.offset, Some(16));
        // And a good gzipped file reads.
        let good = dir.path().join("good.idx.gz");
        std::fs::write(&good, gz(&idx(&[2, 2], &[1, 2, 3, 4]))).unwrap();
        assert_eq!(read_idx(&good).unwrap().data, [1, 2, 3, 4]);
    }
}
