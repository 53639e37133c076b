//! CSV files: a header row, numeric feature columns, and one label column
//! named in the config. Labels that are all non-negative integers are used
//! as they are; otherwise each distinct label is a class, named by it, in
//! sorted order.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::source::{self, KeyError, Source, SourceKeys, SourceKind};
use super::{DataError, Values, MAX_CLASSES, MAX_VALUES};

/// `[data] source = "csv"`.
pub(super) const SOURCE: SourceKind = SourceKind {
    name: "csv",
    keys: &["path", "label"],
    take: |keys| {
        let path = SourceKeys::require(&mut keys.path, "path", "this source needs the file's path")?;
        let label = keys.label.take().filter(|l| !l.trim().is_empty()).ok_or_else(|| {
            ("data.label".to_owned(), "missing; source \"csv\" needs the name of the label column".to_owned())
        })?;
        Ok(Box::new(CsvFile { path, label }))
    },
};

/// A CSV file with a header: numeric feature columns and a label column.
#[derive(Debug, Clone)]
pub struct CsvFile {
    /// The file.
    pub path: PathBuf,
    /// The label column's name.
    pub label: String,
}

impl Source for CsvFile {
    fn name(&self) -> &'static str {
        SOURCE.name
    }

    fn resolve_paths(&mut self, base: &Path) {
        // An absolute path stays as it is: `join` replaces the base with it.
        self.path = base.join(&self.path);
    }

    fn check_files(&self) -> Result<(), KeyError> {
        super::check_file("data.path", &self.path)
    }

    fn samples_file(&self) -> PathBuf {
        self.path.clone()
    }

    fn read(&self, _seed: u64) -> Result<source::SourceData, DataError> {
        let t = read_csv(&self.path, &self.label)?;
        let classes = match &t.class_names {
            Some(names) if names.len() > MAX_CLASSES => {
                return Err(DataError {
                    file: self.path.clone(),
                    offset: None,
                    message: format!(
                        "column `{}` has {} distinct labels: expected at most {MAX_CLASSES} classes",
                        self.label,
                        names.len()
                    ),
                })
            }
            Some(names) => names.len(),
            None => super::classes_of(&t.y, &self.path)?,
        };
        Ok(source::SourceData {
            x: Values::Floats(t.x),
            y: t.y,
            dims: vec![t.features],
            classes,
            class_names: t.class_names,
            feature_names: Some(t.feature_names),
        })
    }

    fn boxed(&self) -> Box<dyn Source> {
        Box::new(self.clone())
    }
}

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
fn read_csv(path: &Path, label: &str) -> Result<Table, DataError> {
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
    // Labels are interned as they come: one small number a row, each
    // distinct label kept once (at most MAX_CLASSES + 1 of them).
    let mut x = Vec::new();
    let mut rows: Vec<u32> = Vec::new();
    let mut distinct: HashMap<String, u32> = HashMap::new();
    let mut empty_at = None;
    for record in reader.records() {
        let record = record.map_err(|e| {
            if let csv::ErrorKind::Io(io) = e.kind() {
                return err(None, io.to_string());
            }
            let line = e.position().map(|p| p.line());
            err(line, format!("{e}; expected {} comma-separated fields as in the header", names.len()))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if x.len() + rows.len() + features + 1 > MAX_VALUES {
            return Err(err(
                Some(line),
                format!("more than {MAX_VALUES} values (features and labels) in all, the most a data set may have"),
            ));
        }
        for (i, field) in record.iter().enumerate() {
            if i == label_at {
                let next = distinct.len() as u32;
                let id = match distinct.get(field) {
                    Some(&id) => id,
                    None if distinct.len() >= MAX_CLASSES => {
                        return Err(err(
                            Some(line),
                            format!(
                                "column `{label}` has more than {MAX_CLASSES} distinct labels: expected at most \
                                 {MAX_CLASSES} classes"
                            ),
                        ))
                    }
                    None => *distinct.entry(field.to_owned()).or_insert(next),
                };
                if field.is_empty() && empty_at.is_none() {
                    empty_at = Some(line);
                }
                rows.push(id);
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
    // Each distinct label, by its interned number.
    let mut labels: Vec<&str> = vec![""; distinct.len()];
    for (l, &id) in &distinct {
        labels[id as usize] = l;
    }
    let numeric: Option<Vec<i64>> = labels.iter().map(|l| l.parse::<i64>().ok().filter(|&v| v >= 0)).collect();
    let (y, class_names) = match numeric {
        Some(values) => (rows.iter().map(|&id| values[id as usize]).collect(), None),
        None => {
            if let Some(line) = empty_at {
                return Err(err(Some(line), format!("column `{label}`: an empty label")));
            }
            // Classes in the labels' sorted order.
            let mut sorted: Vec<(&str, u32)> = labels.iter().enumerate().map(|(id, l)| (*l, id as u32)).collect();
            sorted.sort_unstable();
            let mut class_of = vec![0i64; sorted.len()];
            for (class, (_, id)) in sorted.iter().enumerate() {
                class_of[*id as usize] = class as i64;
            }
            let y = rows.iter().map(|&id| class_of[id as usize]).collect();
            (y, Some(sorted.iter().map(|(l, _)| (*l).to_owned()).collect()))
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

    #[test]
    fn labels_are_interned_and_their_count_bounded_as_they_come() {
        let f = write("x,y\n1,b\n2,a\n3,b\n4,c\n5,a\n");
        let t = read_csv(f.path(), "y").unwrap();
        assert_eq!(t.class_names, Some(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]));
        assert_eq!(t.y, vec![1, 0, 1, 2, 0], "classes in the labels' sorted order");
        let f = write("x,y\n1,7\n2,0\n3,7\n");
        assert_eq!(read_csv(f.path(), "y").unwrap().y, vec![7, 0, 7]);
        let f = write("x,y\n1,a\n2,\n");
        assert!(read_csv(f.path(), "y").unwrap_err().to_string().contains("line 3: column `y`: an empty label"));
        let mut text = String::from("x,y\n");
        for i in 0..=MAX_CLASSES {
            text += &format!("1,l{i}\n");
        }
        let e = read_csv(write(&text).path(), "y").unwrap_err().to_string();
        let last = MAX_CLASSES + 2;
        assert!(e.contains(&format!("line {last}")) && e.contains("more than 65536 distinct labels"), "{e}");
    }
}
