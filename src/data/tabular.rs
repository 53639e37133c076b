//! CSV files: a header row, numeric feature columns, and one label column
//! named in the config. Labels that are all non-negative integers are used
//! as they are; otherwise each distinct label is a class, named by it, in
//! sorted order.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::{DataError, MAX_VALUES};

/// The longest line of a CSV file (a row of a million wide features fits).
pub(super) const MAX_LINE_BYTES: usize = 16 << 20;

/// The most columns a CSV file may have.
pub(super) const MAX_COLUMNS: usize = 1_000_000;

/// The rows of a CSV file.
#[derive(Debug, Clone)]
pub(super) struct Table {
    pub(super) x: Vec<f32>,
    pub(super) y: Vec<i64>,
    pub(super) features: usize,
    pub(super) class_names: Option<Vec<String>>,
    /// The feature columns' names, in order.
    pub(super) feature_names: Vec<String>,
}

/// A CSV reader of `path` (a header row, fields trimmed) whose lines are
/// at most [`MAX_LINE_BYTES`] long: a longer one is a read error naming it.
pub(crate) fn csv_reader(path: &Path) -> std::io::Result<csv::Reader<impl Read>> {
    let file = crate::files::open(path)?;
    let guard = LineGuard { inner: std::io::BufReader::new(file), line: 1, run: 0 };
    Ok(csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(guard))
}

/// Reads `path`, with `label` naming the label column.
pub(super) fn read_csv(path: &Path, label: &str) -> Result<Table, DataError> {
    let err = |line: Option<u64>, message: String| DataError {
        file: path.to_owned(),
        offset: None,
        message: match line {
            Some(l) => format!("line {l}: {message}"),
            None => message,
        },
    };
    let mut reader = csv_reader(path).map_err(|e| err(None, format!("cannot read: {e}")))?;
    let header = reader.headers().map_err(|e| err(Some(1), format!("cannot read the header: {e}")))?.clone();
    if header.iter().all(str::is_empty) {
        return Err(err(Some(1), "no header: expected a first line naming the columns".into()));
    }
    if header.len() > MAX_COLUMNS {
        return Err(err(Some(1), format!("{} columns: expected at most {MAX_COLUMNS}", header.len())));
    }
    // A model reads its features by column name: two columns of one name would be one feature twice.
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = header.iter().find(|h| !seen.insert(*h)) {
        return Err(err(Some(1), format!("two columns are named `{twice}`; expected distinct column names")));
    }
    let label_at = header.iter().position(|h| h == label).ok_or_else(|| {
        let names: Vec<&str> = header.iter().collect();
        err(Some(1), format!("no column `{label}` for the labels; the header has {}", names.join(", ")))
    })?;
    let names: Vec<String> = header.iter().map(str::to_owned).collect();
    let features = names.len() - 1;
    if features == 0 {
        return Err(err(Some(1), format!("only the label column `{label}`: expected feature columns beside it")));
    }
    let (mut x, mut raw_labels) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.map_err(|e| {
            if let csv::ErrorKind::Io(io) = e.kind() {
                return err(None, io.to_string());
            }
            let line = e.position().map(|p| p.line());
            err(line, format!("{e}; expected {} comma-separated fields as in the header", names.len()))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if x.len() + features > MAX_VALUES {
            return Err(err(
                Some(line),
                format!("more than {MAX_VALUES} feature values in all, the most a data set may have"),
            ));
        }
        for (i, field) in record.iter().enumerate() {
            if i == label_at {
                raw_labels.push((field.to_owned(), line));
                continue;
            }
            let v: f32 = field.parse().map_err(|_| {
                err(Some(line), format!("column `{}`: `{field}` is not a number; expected a numeric feature", names[i]))
            })?;
            if !v.is_finite() {
                return Err(err(Some(line), format!("column `{}`: {v} is not a finite number", names[i])));
            }
            x.push(v);
        }
    }
    let numeric: Option<Vec<i64>> = raw_labels.iter().map(|(l, _)| l.parse::<i64>().ok().filter(|&v| v >= 0)).collect();
    let (y, class_names) = match numeric {
        Some(y) => (y, None),
        None => {
            let classes: BTreeMap<&str, i64> = {
                let mut distinct: Vec<&str> = raw_labels.iter().map(|(l, _)| l.as_str()).collect();
                distinct.sort_unstable();
                distinct.dedup();
                distinct.into_iter().enumerate().map(|(i, l)| (l, i as i64)).collect()
            };
            if let Some((_, line)) = raw_labels.iter().find(|(l, _)| l.is_empty()) {
                return Err(err(Some(*line), format!("column `{label}`: an empty label")));
            }
            let y = raw_labels.iter().map(|(l, _)| classes[l.as_str()]).collect();
            (y, Some(classes.keys().map(|s| (*s).to_owned()).collect()))
        }
    };
    let feature_names = names.iter().enumerate().filter(|(i, _)| *i != label_at).map(|(_, n)| n.clone()).collect();
    Ok(Table { x, y, features, class_names, feature_names })
}

/// Refuses a line longer than [`MAX_LINE_BYTES`] as it is read, so that a
/// file without newlines is not read into one record.
struct LineGuard<R> {
    inner: R,
    line: u64,
    /// Bytes since the last newline.
    run: usize,
}

impl<R: Read> Read for LineGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
                self.run = 0;
            } else {
                self.run += 1;
            }
        }
        if self.run > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {} is longer than {MAX_LINE_BYTES} bytes", self.line),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn reads_numeric_and_named_labels() {
        let f = write("a,b,kind\n1,2,cat\n3,4.5,dog\n5,6,cat\n");
        let t = read_csv(f.path(), "kind").unwrap();
        assert_eq!((t.features, t.x.clone(), t.y.clone()), (2, vec![1.0, 2.0, 3.0, 4.5, 5.0, 6.0], vec![0, 1, 0]));
        assert_eq!(t.class_names, Some(vec!["cat".to_owned(), "dog".to_owned()]));
        let f = write("label,x\n2,0.5\n0,1.5\n");
        let t = read_csv(f.path(), "label").unwrap();
        assert_eq!((t.y, t.class_names, t.x), (vec![2, 0], None, vec![0.5, 1.5]));
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let f = write("a,b,y\n1,2,0\n1,x,1\n");
        let e = read_csv(f.path(), "y").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("column `b`") && e.contains("`x` is not a number"), "{e}");
        let f = write("a,b,y\n1,2,0\n1,2\n");
        let e = read_csv(f.path(), "y").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("3 comma-separated fields"), "{e}");
        let e = read_csv(f.path(), "label").unwrap_err().to_string();
        assert!(e.contains("no column `label`") && e.contains("a, b, y"), "{e}");
    }

    #[test]
    fn a_line_without_end_is_refused_as_it_is_read() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut text = b"a,y\n1,0\n".to_vec();
        text.resize(text.len() + MAX_LINE_BYTES + 10, b'1');
        std::fs::write(f.path(), &text).unwrap();
        let e = read_csv(f.path(), "y").unwrap_err().to_string();
        assert!(e.contains("line 3 is longer than"), "{e}");
    }
}
