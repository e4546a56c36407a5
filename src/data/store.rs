//! The slice store: preprocessed axial slices on disk, memory-mapped for training.
//!
//! Layout of a store directory:
//! - `store.json`: format version, the preparation config, label names, the input folder.
//! - `cases.jsonl`: one JSON record per finished case (source files, slice count and size,
//!   byte offsets, the original geometry and the transform to the prepared grid), appended
//!   as each case completes.
//! - `cases/CASE.bin`: one flat little-endian file per case: f32 images `[slices][h][w]`, then
//!   u16 regions (when configured), then u8 labels (when the case has labels).
//!
//! Writing is resumable: a case file is written under a temporary name and renamed, then its
//! record is appended; a rerun skips recorded cases, and a kill at any point leaves every
//! recorded case readable. Only a rerun over the same input folder, with the same settings and
//! label names, continues a store. Reading maps each case file once; a slice is a borrowed view.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::dataset::{CaseSource, Dataset};
use super::intensity::{self, Normalization};
use super::nifti;
use super::prep::{self, PrepConfig, PrepTransform};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Version of the on-disk layout.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "lrc-slice-store";
const STORE_JSON: &str = "store.json";
const CASES_JSONL: &str = "cases.jsonl";
const CASES_DIR: &str = "cases";

/// The serialisable part of a [`PrepConfig`], as recorded in a store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredConfig {
    pub spacing: [f64; 3],
    pub normalization: Normalization,
    pub check_ct: bool,
    /// Whether slices carry region maps.
    pub regions: bool,
}

impl StoredConfig {
    /// The recorded part of `cfg`.
    pub fn of(cfg: &PrepConfig) -> StoredConfig {
        StoredConfig {
            spacing: cfg.spacing,
            normalization: cfg.normalization,
            check_ct: cfg.check_ct,
            regions: cfg.regions.is_some(),
        }
    }

    /// Checks the spacing and normalisation as [`PrepConfig::validate`] does (a checkpoint or
    /// store file carries them, and may have been edited).
    pub fn validate(&self) -> Result<()> {
        PrepConfig {
            spacing: self.spacing,
            normalization: self.normalization,
            check_ct: self.check_ct,
            regions: None,
        }
        .validate()
    }

    /// Whether a store written with `self` can be continued with `other`.
    fn compatible(&self, other: &StoredConfig) -> bool {
        self.spacing == other.spacing && self.normalization == other.normalization && self.regions == other.regions
    }
}

/// `store.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreHeader {
    pub format: String,
    pub version: u32,
    pub config: StoredConfig,
    /// Label value to name.
    pub label_names: BTreeMap<u8, String>,
    /// The folder the store was prepared from.
    pub source: PathBuf,
}

/// One line of `cases.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub name: String,
    pub image: PathBuf,
    pub labels: Option<PathBuf>,
    /// Path of the case file, relative to the store.
    pub file: String,
    pub slices: usize,
    pub height: usize,
    pub width: usize,
    /// Byte offsets in the case file (images start at 0).
    pub regions_offset: Option<u64>,
    pub labels_offset: Option<u64>,
    pub file_len: u64,
    /// Labels present in the prepared label map.
    pub labels_present: Vec<u8>,
    /// Original geometry and the way to the prepared grid (and back).
    pub transform: PrepTransform,
}

impl CaseRecord {
    /// Bytes the record's planes take, or `None` when the dims overflow (a damaged record).
    fn expected_len(&self) -> Option<u64> {
        let n = (self.slices as u64)
            .checked_mul(self.height as u64)?
            .checked_mul(self.width as u64)?;
        let per_voxel = 4 + if self.regions_offset.is_some() { 2 } else { 0 } + u64::from(self.labels_offset.is_some());
        n.checked_mul(per_voxel)
    }
}

/// How [`write_store`] runs.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Report and skip a case that cannot be read instead of stopping.
    pub skip_bad: bool,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// What a [`write_store`] run did.
#[derive(Debug, Default)]
pub struct StoreSummary {
    /// Cases written by this run.
    pub written: Vec<String>,
    /// Cases already in the store from an earlier run.
    pub already_present: usize,
    /// Cases skipped (`skip_bad`) with the reason.
    pub skipped: Vec<(String, Error)>,
    /// Slices written by this run.
    pub slices: usize,
    /// Bytes of input files read by this run.
    pub bytes_read: u64,
    /// Bytes of case files written by this run.
    pub bytes_written: u64,
    pub seconds: f64,
}

fn json_err(path: &Path, e: serde_json::Error) -> Error {
    Error::format(path, format!("invalid JSON: {e}"))
}

/// The config of an existing store at `dir`, or `None` when there is none.
pub fn existing_config(dir: &Path) -> Result<Option<StoredConfig>> {
    let path = dir.join(STORE_JSON);
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(read_header(&path)?.config))
}

fn read_header(path: &Path) -> Result<StoreHeader> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let h: StoreHeader = serde_json::from_str(&text).map_err(|e| json_err(path, e))?;
    if h.format != FORMAT_NAME || h.version != FORMAT_VERSION {
        return Err(Error::format(
            path,
            format!(
                "not a slice store of this version (format {:?} v{}, expected {FORMAT_NAME:?} v{FORMAT_VERSION})",
                h.format, h.version
            ),
        ));
    }
    Ok(h)
}

/// Reads the complete lines of `cases.jsonl`; a torn last line (a kill during the append) is
/// ignored. Returns the records (later ones replace earlier ones of the same name) and the
/// byte length of the complete part.
fn read_records(path: &Path) -> Result<(Vec<CaseRecord>, u64)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut by_name: BTreeMap<String, CaseRecord> = BTreeMap::new();
    let mut good_len = 0u64;
    let mut line = String::new();
    let mut line_no = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if !line.ends_with('\n') {
            break; // torn append
        }
        let mut record: CaseRecord = serde_json::from_str(line.trim_end())
            .map_err(|e| Error::format(path, format!("line {line_no}: invalid record: {e}")))?;
        nifti::refresh_geometry(&mut record.transform.original);
        by_name.insert(record.name.clone(), record);
        good_len += n as u64;
    }
    Ok((by_name.into_values().collect(), good_len))
}

/// A case prepared in memory, ready to be written.
struct PreparedCase {
    prepared: prep::Prepared,
    regions: Option<Vec<u16>>,
    bytes_read: u64,
}

/// Reads, checks and prepares one case. Every error names the file at fault.
fn prepare_case(case: &CaseSource, cfg: &PrepConfig) -> Result<PreparedCase> {
    let mut bytes_read = std::fs::metadata(&case.image).map(|m| m.len()).unwrap_or(0);
    let volume = nifti::read_volume(&case.image)?;
    if cfg.check_ct {
        intensity::check_ct(&volume.data).map_err(|m| Error::format(&case.image, m))?;
    }
    let labels = match &case.labels {
        Some(path) => {
            bytes_read += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let labels = nifti::read_labels(path)?;
            prep::check_labels_match(&volume.geometry, &labels.geometry, path, &case.image)?;
            Some(labels)
        }
        None => None,
    };
    // A volume the settings cannot prepare (its grid at the target spacing too large) is
    // named like one that cannot be read.
    let prepared = prep::preprocess_volume(&volume, labels.as_ref(), cfg).map_err(|e| match e {
        Error::Config(msg) => Error::format(&case.image, msg),
        e => e,
    })?;
    let regions = match &cfg.regions {
        None => None,
        Some(f) => {
            let [nz, h, w] = prepared.dims();
            let mut all = Vec::with_capacity(nz * h * w);
            for z in 0..nz {
                let r = f(prepared.image_slice(z), h, w);
                if r.len() != h * w {
                    return Err(Error::shape(
                        "region function",
                        format!("returned {} ids for a {h} x {w} slice", r.len()),
                    ));
                }
                all.extend_from_slice(&r);
            }
            Some(all)
        }
    };
    Ok(PreparedCase {
        prepared,
        regions,
        bytes_read,
    })
}

/// Writes a prepared case file (temporary name, then rename) and returns its record.
fn write_case_file(dir: &Path, case: &CaseSource, p: &PreparedCase) -> Result<CaseRecord> {
    let [slices, height, width] = p.prepared.dims();
    let n = (slices * height * width) as u64;
    let file = format!("{CASES_DIR}/{}.bin", case.name);
    let path = dir.join(&file);
    let tmp = dir.join(format!("{CASES_DIR}/{}.bin.partial", case.name));
    let mut offset = n * 4;
    let regions_offset = p.regions.as_ref().map(|_| {
        let at = offset;
        offset += n * 2;
        at
    });
    let labels_offset = p.prepared.labels.as_ref().map(|_| offset);
    let io = |e| Error::io(&tmp, e);
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
        w.write_all(bytemuck::cast_slice(&to_le_f32(&p.prepared.image)))
            .map_err(io)?;
        if let Some(r) = &p.regions {
            let le: Vec<u16> = r.iter().map(|v| v.to_le()).collect();
            w.write_all(bytemuck::cast_slice(&le)).map_err(io)?;
        }
        if let Some(l) = &p.prepared.labels {
            w.write_all(l).map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    let record = CaseRecord {
        name: case.name.clone(),
        image: case.image.clone(),
        labels: case.labels.clone(),
        file,
        slices,
        height,
        width,
        regions_offset,
        labels_offset,
        file_len: 0,
        labels_present: p
            .prepared
            .labels
            .as_deref()
            .map(super::volume::labels_present)
            .unwrap_or_default(),
        transform: p.prepared.transform.clone(),
    };
    // The planes were just built in memory, so their byte count fits.
    let file_len = record
        .expected_len()
        .expect("the planes of a prepared case fit in memory");
    Ok(CaseRecord { file_len, ..record })
}

/// Values as little-endian bit patterns (a no-op copy on little-endian hosts).
fn to_le_f32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits().to_le()).collect()
}

/// Opens (or creates) the store directory for writing with `cfg` and returns the names of the
/// cases already complete in it.
fn open_for_writing(dir: &Path, cfg: &StoredConfig, dataset: &Dataset) -> Result<Vec<String>> {
    let header_path = dir.join(STORE_JSON);
    let source = resolved(&dataset.root);
    if header_path.is_file() {
        let existing = read_header(&header_path)?;
        if !existing.config.compatible(cfg) {
            return Err(Error::config(format!(
                "the store at {} was prepared with a different configuration ({:?}) than this run ({:?}); \
                 use another output folder or delete this one",
                dir.display(),
                existing.config,
                cfg
            )));
        }
        // A resume skips the cases the store holds by name: from another folder, cases of the
        // same name would be skipped (and other label maps mixed in) without a word.
        if resolved(&existing.source) != source {
            return Err(Error::config(format!(
                "the store at {} was prepared from {}, and this run reads {}: rerun with that input \
                 folder to resume it, or use another output folder",
                dir.display(),
                existing.source.display(),
                source.display()
            )));
        }
        if existing.label_names != dataset.label_names {
            return Err(Error::config(format!(
                "the store at {} was prepared with the labels {:?}, and {} now declares {:?}: \
                 use another output folder or delete this one",
                dir.display(),
                existing.label_names,
                dataset.root.display(),
                dataset.label_names
            )));
        }
    } else {
        if dir.exists() {
            // What a run killed while writing the header leaves does not make the folder foreign.
            let leftover = format!(".{STORE_JSON}.tmp");
            let mut entries = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter(|e| e.as_ref().map_or(true, |e| e.file_name().to_string_lossy() != leftover));
            if entries.next().is_some() {
                return Err(Error::config(format!(
                    "{} exists, is not empty and is not a slice store: choose another output folder",
                    dir.display()
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let header = StoreHeader {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            config: cfg.clone(),
            label_names: dataset.label_names.clone(),
            source: source.clone(),
        };
        let text = serde_json::to_string_pretty(&header).map_err(|e| json_err(&header_path, e))?;
        crate::checkpoint::write_atomic(&header_path, text.as_bytes())?;
    }
    let cases_dir = dir.join(CASES_DIR);
    std::fs::create_dir_all(&cases_dir).map_err(|e| Error::io(&cases_dir, e))?;
    // Leftovers of a killed run: temporary case files.
    for entry in std::fs::read_dir(&cases_dir)
        .map_err(|e| Error::io(&cases_dir, e))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().ends_with(".partial") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // Cut a torn last record so that the next append starts on a fresh line.
    let index = dir.join(CASES_JSONL);
    let (records, good_len) = read_records(&index)?;
    if index.is_file() {
        let len = std::fs::metadata(&index).map_err(|e| Error::io(&index, e))?.len();
        if len != good_len {
            let f = OpenOptions::new()
                .write(true)
                .open(&index)
                .map_err(|e| Error::io(&index, e))?;
            f.set_len(good_len).map_err(|e| Error::io(&index, e))?;
        }
    }
    let done = records
        .into_iter()
        .filter(|r| std::fs::metadata(dir.join(&r.file)).is_ok_and(|m| m.len() == r.file_len))
        .map(|r| r.name)
        .collect();
    Ok(done)
}

/// `path` made absolute with links resolved, so that one folder reached two ways compares equal;
/// as given where it cannot be resolved (a folder since moved or deleted).
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Appends one record line to `cases.jsonl` in a single write.
fn append_record(index: &Mutex<File>, path: &Path, record: &CaseRecord) -> Result<()> {
    let mut line = serde_json::to_string(record).map_err(|e| json_err(path, e))?;
    line.push('\n');
    let mut f = index.lock().unwrap_or_else(|p| p.into_inner());
    f.seek(SeekFrom::End(0)).map_err(|e| Error::io(path, e))?;
    f.write_all(line.as_bytes()).map_err(|e| Error::io(path, e))?;
    f.flush().map_err(|e| Error::io(path, e))
}

fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::config(format!("cannot start {threads} worker threads: {e}")))
}

fn progress_bar(len: usize, show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:32}}] {{pos}}/{{len}} volumes, {{elapsed}} elapsed, eta {{eta}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

/// Prepares every case of `dataset` into the store at `dir`, in parallel over volumes.
///
/// Cases already in the store are skipped (resume). A case that fails stops the run with its
/// error (naming the file and the problem) after the cases in flight finish; with
/// `opts.skip_bad` it is reported on stderr, skipped, and listed in the summary. Either way
/// every case written stays valid.
pub fn write_store(dataset: &Dataset, dir: &Path, cfg: &PrepConfig, opts: &StoreOptions) -> Result<StoreSummary> {
    cfg.validate()?;
    let start = Instant::now();
    let stored = StoredConfig::of(cfg);
    let done = open_for_writing(dir, &stored, dataset)?;
    let pending: Vec<&CaseSource> = dataset.cases.iter().filter(|c| !done.contains(&c.name)).collect();
    let index_path = dir.join(CASES_JSONL);
    let index = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&index_path)
        .map_err(|e| Error::io(&index_path, e))?;
    let index = Mutex::new(index);
    let summary = Mutex::new(StoreSummary {
        already_present: dataset.cases.len() - pending.len(),
        ..StoreSummary::default()
    });
    let pb = progress_bar(pending.len(), opts.progress, "prep");
    let run_case = |case: &CaseSource| -> Result<()> {
        let outcome = prepare_case(case, cfg).and_then(|p| {
            let record = write_case_file(dir, case, &p)?;
            append_record(&index, &index_path, &record)?;
            Ok((p.bytes_read, record))
        });
        pb.inc(1);
        let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok((bytes_read, record)) => {
                s.written.push(case.name.clone());
                s.slices += record.slices;
                s.bytes_read += bytes_read;
                s.bytes_written += record.file_len;
                Ok(())
            }
            Err(e) if opts.skip_bad => {
                pb.suspend(|| eprintln!("skipped case {}: {e}", case.name));
                s.skipped.push((case.name.clone(), e));
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    let result = thread_pool(opts.threads)?.install(|| {
        use rayon::prelude::*;
        pending.par_iter().try_for_each(|c| run_case(c))
    });
    pb.finish_and_clear();
    result?;
    let mut s = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    s.written.sort();
    s.seconds = start.elapsed().as_secs_f64();
    Ok(s)
}

/// Fits the nnU-Net-style z-score normalisation on the foreground of all cases: up to
/// [`intensity::SAMPLES_PER_CASE`] voxels per case (labels > 0 when the case has labels,
/// else body voxels above -500 HU), seeded so that reruns fit the same values.
pub fn fit_zscore(dataset: &Dataset, opts: &StoreOptions) -> Result<Normalization> {
    let pb = progress_bar(dataset.cases.len(), opts.progress, "fit z-score");
    let root = Rng::new(0x5eed_2a5c);
    let per_case = thread_pool(opts.threads)?.install(|| {
        use rayon::prelude::*;
        dataset
            .cases
            .par_iter()
            .enumerate()
            .map(|(i, case)| {
                let r = (|| -> Result<Vec<f32>> {
                    let v = nifti::read_volume(&case.image)?;
                    let labels = match &case.labels {
                        Some(p) => {
                            let l = nifti::read_labels(p)?;
                            prep::check_labels_match(&v.geometry, &l.geometry, p, &case.image)?;
                            Some(l)
                        }
                        None => None,
                    };
                    let mut rng = root.fork(i as u64);
                    Ok(intensity::sample_foreground(
                        &v.data,
                        labels.as_ref().map(|l| l.data.as_slice()),
                        intensity::SAMPLES_PER_CASE,
                        &mut rng,
                    ))
                })();
                pb.inc(1);
                match r {
                    Err(e) if opts.skip_bad => {
                        pb.suspend(|| eprintln!("skipped case {} while fitting the z-score: {e}", case.name));
                        Ok(Vec::new())
                    }
                    other => other,
                }
            })
            .collect::<Result<Vec<Vec<f32>>>>()
    });
    pb.finish_and_clear();
    let mut samples: Vec<f32> = per_case?.into_iter().flatten().collect();
    intensity::fit_zscore(&mut samples).map_err(|m| Error::format(&dataset.root, m))
}

/// One case of an open store.
struct MappedCase {
    record: CaseRecord,
    map: Mmap,
}

/// A read-only store of prepared slices, memory-mapped.
///
/// Slices are numbered across cases in case-name order. The files must not be modified while
/// the store is open.
pub struct SliceStore {
    dir: PathBuf,
    header: StoreHeader,
    cases: Vec<MappedCase>,
    /// Global index of each case's first slice, plus the total at the end.
    starts: Vec<usize>,
}

/// A borrowed view of one stored slice.
#[derive(Clone, Copy, Debug)]
pub struct SliceView<'a> {
    /// Normalised intensities, `h * w`, row-major.
    pub image: &'a [f32],
    pub labels: Option<&'a [u8]>,
    pub regions: Option<&'a [u16]>,
    pub h: usize,
    pub w: usize,
    /// Index of the case in [`SliceStore::cases`].
    pub case: usize,
    /// Index of the slice within its case (prepared z, inferior to superior).
    pub z: usize,
}

impl SliceStore {
    /// Opens a store written by [`write_store`], checking every case file's size.
    pub fn open(dir: impl AsRef<Path>) -> Result<SliceStore> {
        if cfg!(target_endian = "big") {
            return Err(Error::config("slice stores are little-endian; this host is big-endian"));
        }
        let dir = dir.as_ref().to_path_buf();
        let header = read_header(&dir.join(STORE_JSON))?;
        header
            .config
            .validate()
            .map_err(|e| Error::format(dir.join(STORE_JSON), e.to_string()))?;
        let (records, _) = read_records(&dir.join(CASES_JSONL))?;
        let mut cases = Vec::with_capacity(records.len());
        for record in records {
            let path = dir.join(&record.file);
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
            if len != record.file_len {
                return Err(Error::format(
                    &path,
                    format!("case file holds {len} bytes, its record says {}", record.file_len),
                ));
            }
            if record.expected_len() != Some(record.file_len) {
                return Err(Error::format(
                    dir.join(CASES_JSONL),
                    format!(
                        "the record of case {:?} is damaged: {} slices of {} x {} with its planes need {}, its file holds {} bytes",
                        record.name,
                        record.slices,
                        record.height,
                        record.width,
                        record
                            .expected_len()
                            .map_or("more bytes than a file can hold".to_string(), |n| format!("{n} bytes")),
                        record.file_len
                    ),
                ));
            }
            // SAFETY: the store's files are written once (temporary name + rename) and never
            // modified in place; the map is read-only.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            cases.push(MappedCase { record, map });
        }
        cases.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        let mut starts = Vec::with_capacity(cases.len() + 1);
        let mut total = 0;
        for c in &cases {
            starts.push(total);
            total += c.record.slices;
        }
        starts.push(total);
        let store = SliceStore {
            dir,
            header,
            cases,
            starts,
        };
        // Check alignment and sizes of every view once, so that `slice` cannot fail later.
        for c in 0..store.cases.len() {
            store.case_views(c)?;
        }
        Ok(store)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of slices.
    pub fn len(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    /// Whether the store holds no slice.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The preparation config.
    pub fn config(&self) -> &StoredConfig {
        &self.header.config
    }

    /// Label value to name.
    pub fn label_names(&self) -> &BTreeMap<u8, String> {
        &self.header.label_names
    }

    /// The normalised value of air, to pad slices with.
    pub fn pad_value(&self) -> f32 {
        self.header.config.normalization.air()
    }

    /// The case records, in slice order.
    pub fn cases(&self) -> Vec<&CaseRecord> {
        self.cases.iter().map(|c| &c.record).collect()
    }

    /// The record of case `case` (an index into [`SliceStore::cases`]).
    pub fn case_record(&self, case: usize) -> &CaseRecord {
        &self.cases[case].record
    }

    /// The range of global slice indices of case `case`.
    pub fn case_range(&self, case: usize) -> std::ops::Range<usize> {
        self.starts[case]..self.starts[case + 1]
    }

    #[allow(clippy::type_complexity)]
    fn case_views(&self, c: usize) -> Result<(&[f32], Option<&[u16]>, Option<&[u8]>)> {
        let mc = &self.cases[c];
        let r = &mc.record;
        let n = r.slices * r.height * r.width;
        let bytes: &[u8] = &mc.map;
        let path = || self.dir.join(&r.file);
        let section = |at: u64, len: usize| -> Result<&[u8]> {
            bytes
                .get(at as usize..at as usize + len)
                .ok_or_else(|| Error::format(path(), format!("section at {at} of {len} bytes past the end")))
        };
        let image: &[f32] = bytemuck::try_cast_slice(section(0, n * 4)?)
            .map_err(|e| Error::format(path(), format!("image section: {e}")))?;
        let regions: Option<&[u16]> = match r.regions_offset {
            Some(at) => Some(
                bytemuck::try_cast_slice(section(at, n * 2)?)
                    .map_err(|e| Error::format(path(), format!("region section: {e}")))?,
            ),
            None => None,
        };
        let labels = match r.labels_offset {
            Some(at) => Some(section(at, n)?),
            None => None,
        };
        Ok((image, regions, labels))
    }

    /// Slice `i` (0-based across the store), or `None` past the end.
    pub fn get(&self, i: usize) -> Option<SliceView<'_>> {
        if i >= self.len() {
            return None;
        }
        let case = self.starts.partition_point(|&s| s <= i) - 1;
        let z = i - self.starts[case];
        let r = &self.cases[case].record;
        let n = r.height * r.width;
        // Checked in `open`.
        let (image, regions, labels) = self.case_views(case).ok()?;
        Some(SliceView {
            image: &image[z * n..(z + 1) * n],
            labels: labels.map(|l| &l[z * n..(z + 1) * n]),
            regions: regions.map(|g| &g[z * n..(z + 1) * n]),
            h: r.height,
            w: r.width,
            case,
            z,
        })
    }

    /// Slice `i`. Panics when `i >= len()`, like slice indexing; use [`SliceStore::get`] to probe.
    pub fn slice(&self, i: usize) -> SliceView<'_> {
        match self.get(i) {
            Some(v) => v,
            None => panic!("slice index {i} out of range for a store of {} slices", self.len()),
        }
    }
}
