//! Reading and validating `definitions.zip`.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use super::{Catalog, CatalogError, CatalogVersion, Row, NONE};
use crate::inventory::Severity;

/// The most one CSV of the archive may unpack to (the full catalog is 136 MB).
pub const MAX_UNPACKED_BYTES: u64 = 1 << 30;

/// The longest field accepted (the catalog's longest is a few hundred bytes).
const MAX_FIELD_BYTES: usize = 16 * 1024;

const COLUMNS: [&str; 10] = [
    "DatePosted",
    "CVE",
    "BulletinKB",
    "Title",
    "AffectedProduct",
    "AffectedComponent",
    "Severity",
    "Impact",
    "Supersedes",
    "Exploits",
];

/// Parses a WES-NG `definitions.zip` (`CVEs_*.csv`, optional `Custom_*.csv`
/// and `Version_*.txt`). Every row is validated; the first malformed one
/// fails the whole parse with its file, line and column.
///
/// # Errors
/// See [`CatalogError`].
pub fn parse_definitions(bytes: &[u8]) -> Result<Catalog, CatalogError> {
    parse_definitions_with_progress(bytes, &mut |_, _| {})
}

/// [`parse_definitions`], calling `progress(unpacked_bytes_read, unpacked_total)`
/// every few thousand rows.
///
/// # Errors
/// See [`CatalogError`].
pub fn parse_definitions_with_progress(
    bytes: &[u8],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Catalog, CatalogError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| CatalogError::Archive(e.to_string()))?;
    let names: Vec<String> = zip
        .file_names()
        .filter(|n| !n.contains('/') && !n.contains('\\'))
        .map(str::to_owned)
        .collect();
    let pick = |prefix: &str, suffix: &str| -> Option<String> {
        let mut found: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
            .collect();
        found.sort();
        found.last().map(|n| (*n).clone())
    };
    let cves_file = pick("CVEs_", ".csv").ok_or(CatalogError::MissingFile("CVEs_*.csv"))?;
    let custom_file = pick("Custom_", ".csv");
    let version = CatalogVersion {
        cves_date: file_date(&cves_file)?,
        custom_date: custom_file.as_deref().map(file_date).transpose()?,
        format: pick("Version_", ".txt").map(|n| n["Version_".len()..n.len() - 4].to_owned()),
    };

    let mut files = vec![cves_file];
    files.extend(custom_file);
    let mut total = 0u64;
    for name in &files {
        let size = zip
            .by_name(name)
            .map_err(|e| CatalogError::Archive(e.to_string()))?
            .size();
        if size > MAX_UNPACKED_BYTES {
            return Err(CatalogError::TooLarge {
                file: name.clone(),
                limit: MAX_UNPACKED_BYTES,
            });
        }
        total += size;
    }

    let mut builder = Builder::default();
    let mut done = 0u64;
    for name in &files {
        let entry = zip
            .by_name(name)
            .map_err(|e| CatalogError::Archive(e.to_string()))?;
        let reader = Counting {
            inner: entry,
            read: 0,
            limit: MAX_UNPACKED_BYTES,
        };
        done = builder.read_csv(name, reader, done, total, progress)?;
    }
    progress(total, total);
    Ok(builder.finish(version))
}

/// `CVEs_20260628.csv` -> `2026-06-28`.
fn file_date(name: &str) -> Result<String, CatalogError> {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let digits = stem.rsplit_once('_').map_or("", |(_, d)| d);
    match parse_date(digits) {
        Some(_) => Ok(format!(
            "{}-{}-{}",
            &digits[..4],
            &digits[4..6],
            &digits[6..]
        )),
        None => Err(CatalogError::Archive(format!(
            "{name} does not end in a YYYYMMDD date"
        ))),
    }
}

/// `YYYYMMDD` with a plausible month and day.
fn parse_date(text: &str) -> Option<u32> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = text.parse().ok()?;
    let (month, day) = (n / 100 % 100, n % 100);
    ((1..=12).contains(&month) && (1..=31).contains(&day) && n / 10_000 >= 1990).then_some(n)
}

/// A reader that fails once more than `limit` bytes came through.
struct Counting<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::other("unpacked size over the limit"));
        }
        Ok(n)
    }
}

#[derive(Default)]
struct Builder {
    strings: Vec<Box<str>>,
    string_ids: HashMap<Box<str>, u32>,
    supersedes: Vec<Box<[u32]>>,
    supersedes_ids: HashMap<Box<str>, u32>,
    rows: Vec<Row>,
}

impl Builder {
    fn intern(&mut self, text: &str) -> u32 {
        if text.is_empty() {
            return NONE;
        }
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = u32::try_from(self.strings.len()).unwrap_or(NONE - 1);
        let boxed: Box<str> = text.into();
        self.strings.push(boxed.clone());
        self.string_ids.insert(boxed, id);
        id
    }

    fn intern_supersedes(&mut self, raw: &str) -> u32 {
        if self.supersedes.is_empty() {
            self.supersedes.push(Box::new([]));
            self.supersedes_ids.insert("".into(), 0);
        }
        if let Some(&id) = self.supersedes_ids.get(raw) {
            return id;
        }
        let list: Vec<u32> = raw
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|kb| self.intern(kb))
            .collect();
        let id = u32::try_from(self.supersedes.len()).unwrap_or(0);
        self.supersedes.push(list.into_boxed_slice());
        self.supersedes_ids.insert(raw.into(), id);
        id
    }

    /// Reads one CSV; returns the unpacked bytes read so far over all files.
    fn read_csv<R: Read>(
        &mut self,
        file: &str,
        reader: Counting<R>,
        done_before: u64,
        total: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64, CatalogError> {
        let mut csv = csv::ReaderBuilder::new()
            .flexible(true)
            .comment(Some(b'#'))
            .from_reader(reader);
        let csv_error = |err: csv::Error, file: &str| -> CatalogError {
            let line = err.position().map_or(0, csv::Position::line);
            match err.kind() {
                csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::Other => {
                    CatalogError::TooLarge {
                        file: file.to_owned(),
                        limit: MAX_UNPACKED_BYTES,
                    }
                }
                csv::ErrorKind::Io(io) => CatalogError::Archive(format!("{file}: {io}")),
                csv::ErrorKind::Utf8 { err, .. } => CatalogError::Row {
                    file: file.to_owned(),
                    line,
                    column: COLUMNS.get(err.field()).copied().unwrap_or("?").to_owned(),
                    reason: "not valid UTF-8".to_owned(),
                },
                other => CatalogError::Row {
                    file: file.to_owned(),
                    line,
                    column: "-".to_owned(),
                    reason: format!("{other:?}"),
                },
            }
        };
        let headers = csv.headers().map_err(|e| csv_error(e, file))?.clone();
        let mut at = [0usize; 10];
        for (slot, column) in at.iter_mut().zip(COLUMNS) {
            *slot = headers
                .iter()
                .position(|h| h.trim() == column)
                .ok_or_else(|| CatalogError::MissingColumn {
                    file: file.to_owned(),
                    column,
                })?;
        }
        let width = headers.len();
        let mut record = csv::StringRecord::new();
        let mut since_report = 0u32;
        loop {
            match csv.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => return Err(csv_error(err, file)),
            }
            let line = record.position().map_or(0, csv::Position::line);
            let row_error = |column: &str, reason: String| CatalogError::Row {
                file: file.to_owned(),
                line,
                column: column.to_owned(),
                reason,
            };
            if record.len() != width {
                return Err(row_error(
                    "-",
                    format!("expected {width} fields, found {}", record.len()),
                ));
            }
            for (i, field) in record.iter().enumerate() {
                if field.len() > MAX_FIELD_BYTES {
                    let name = headers.get(i).unwrap_or("?");
                    return Err(row_error(name, "field too long".to_owned()));
                }
            }
            let field = |c: usize| record.get(at[c]).unwrap_or("").trim();
            let date = parse_date(field(0)).ok_or_else(|| {
                row_error(COLUMNS[0], format!("{:?} is not a YYYYMMDD date", field(0)))
            })?;
            let product_text = field(4);
            if product_text.is_empty() {
                return Err(row_error(COLUMNS[4], "empty product".to_owned()));
            }
            let severity = parse_severity(field(6))
                .ok_or_else(|| row_error(COLUMNS[6], format!("unknown severity {:?}", field(6))))?;
            let row = Row {
                date,
                cve: self.intern(field(1)),
                kb: self.intern(field(2)),
                title: self.intern(field(3)),
                product: self.intern(product_text),
                supersedes: self.intern_supersedes(field(8)),
                severity,
            };
            self.rows.push(row);
            since_report += 1;
            if since_report == 8192 {
                since_report = 0;
                let done = done_before + record.position().map_or(0, csv::Position::byte);
                progress(done.min(total), total);
            }
        }
        Ok(done_before + csv.position().byte())
    }

    fn finish(mut self, version: CatalogVersion) -> Catalog {
        if self.supersedes.is_empty() {
            self.supersedes.push(Box::new([]));
        }
        self.rows.shrink_to_fit();
        Catalog::from_parts(version, self.strings, self.supersedes, self.rows)
    }
}

/// The catalog's severities; `None`, blanks and PowerShell's
/// `System.Object[]` (a list the exporter failed to flatten) carry none.
fn parse_severity(text: &str) -> Option<Severity> {
    let known = [
        ("critical", Severity::Critical),
        ("important", Severity::Important),
        ("moderate", Severity::Moderate),
        ("low", Severity::Low),
        ("", Severity::Unknown),
        ("none", Severity::Unknown),
        ("system.object[]", Severity::Unknown),
    ];
    known
        .iter()
        .find(|(k, _)| text.eq_ignore_ascii_case(k))
        .map(|(_, s)| *s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) const HEADER: &str =
        "\"DatePosted\",\"CVE\",\"BulletinKB\",\"Title\",\"AffectedProduct\",\
         \"AffectedComponent\",\"Severity\",\"Impact\",\"Supersedes\",\"Exploits\"\n";

    /// A `definitions.zip` with the given CVE rows (after the header) and custom rows.
    pub(crate) fn zip_of(cves: &str, custom: Option<&str>) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut out);
            let opts = zip::write::SimpleFileOptions::default();
            zip.start_file("CVEs_20260628.csv", opts).expect("zip");
            zip.write_all(HEADER.as_bytes()).expect("zip");
            zip.write_all(cves.as_bytes()).expect("zip");
            if let Some(custom) = custom {
                zip.start_file("Custom_20190321.csv", opts).expect("zip");
                zip.write_all(HEADER.as_bytes()).expect("zip");
                zip.write_all(custom.as_bytes()).expect("zip");
            }
            zip.start_file("Version_0.94.txt", opts).expect("zip");
            zip.write_all(b"wes 0.94").expect("zip");
            zip.finish().expect("zip");
        }
        out.into_inner()
    }

    pub(crate) fn row(
        date: &str,
        cve: &str,
        kb: &str,
        product: &str,
        sev: &str,
        sup: &str,
    ) -> String {
        format!("\"{date}\",\"{cve}\",\"{kb}\",\"Update {kb}\",\"{product}\",\"c\",\"{sev}\",\"i\",\"{sup}\",\"\"\n")
    }

    #[test]
    fn parses_and_interns() {
        let rows = [
            row(
                "20240109",
                "CVE-2024-0001",
                "100",
                "Windows P",
                "Important",
                "",
            ),
            row(
                "20240213",
                "CVE-2024-0002",
                "200",
                "Windows P",
                "System.Object[]",
                "100",
            ),
            row("20240213", "CVE-2024-0002", "200", "Windows Q ", "", "100"),
        ]
        .concat();
        let custom = "# Service Packs\r\n\"20150407\",\"SP1\",\"SP1\",\"t\",\"Windows P\",\"\",\"Critical\",\"x\",\"200;SP0\",\"\"\r\n";
        let catalog = parse_definitions(&zip_of(&rows, Some(custom))).expect("parses");
        assert_eq!(catalog.rows().len(), 4);
        assert_eq!(catalog.version.cves_date, "2026-06-28");
        assert_eq!(catalog.version.custom_date.as_deref(), Some("2019-03-21"));
        assert_eq!(catalog.version.format.as_deref(), Some("0.94"));
        let r = catalog.rows();
        assert_eq!(r[1].cve, r[2].cve, "CVE strings are interned");
        assert_eq!(r[1].supersedes, r[2].supersedes);
        assert_eq!(r[1].severity, Severity::Unknown);
        assert_eq!(catalog.rows_of_product_key("windows q").len(), 1);
        assert_eq!(catalog.rows_of_product_key("windows p").len(), 3);
        let sp = catalog.kb_id("SP1").expect("custom KB");
        let olds: Vec<&str> = catalog
            .directly_superseded(sp)
            .iter()
            .map(|&k| catalog.str(k))
            .collect();
        assert_eq!(olds, ["200", "SP0"]);
        assert_eq!(catalog.summary().cves, 3);
    }

    #[test]
    fn malformed_rows_name_file_line_and_column() {
        let good = row("20240109", "CVE-2024-0001", "100", "Windows P", "Low", "");
        let cases = [
            (row("2024019", "CVE-1", "1", "P", "Low", ""), "DatePosted"),
            (row("20241309", "CVE-1", "1", "P", "Low", ""), "DatePosted"),
            (
                row("20240109", "CVE-1", "1", "", "Low", ""),
                "AffectedProduct",
            ),
            (row("20240109", "CVE-1", "1", "P", "Severe", ""), "Severity"),
            ("\"20240109\",\"CVE-1\"\n".to_owned(), "-"),
        ];
        for (bad, column) in cases {
            let csv = format!("{good}{good}{bad}{good}");
            match parse_definitions(&zip_of(&csv, None)) {
                Err(CatalogError::Row {
                    file,
                    line,
                    column: c,
                    ..
                }) => {
                    assert_eq!(file, "CVEs_20260628.csv");
                    assert_eq!(line, 4, "{bad}");
                    assert_eq!(c, column, "{bad}");
                }
                other => panic!("{bad}: expected a row error, got {other:?}"),
            }
        }
        let custom_bad = row("x", "SP1", "SP1", "P", "Low", "");
        let err = parse_definitions(&zip_of(&good, Some(&custom_bad))).expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("Custom_20190321.csv line 2, column DatePosted"),
            "{err}"
        );
    }

    #[test]
    fn refuses_non_archives_and_missing_files() {
        assert!(matches!(
            parse_definitions(b"not a zip"),
            Err(CatalogError::Archive(_))
        ));
        let mut out = Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut out);
            zip.start_file("readme.txt", zip::write::SimpleFileOptions::default())
                .expect("zip");
            zip.finish().expect("zip");
        }
        assert!(matches!(
            parse_definitions(&out.into_inner()),
            Err(CatalogError::MissingFile(_))
        ));
    }
}
