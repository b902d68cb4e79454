//! `CacheDir`, `CommitBatch` and `NpyHeader`: argument intake and delegation to the core.
//!
//! A source buffer is written with the GIL released, gathered into C order by the core when
//! it is strided; blocks of an iterable source are pulled with the GIL held. Between pieces
//! of a long write the signal handlers run, so Ctrl-C removes the temp and raises, and an
//! optional progress callable hears how many bytes moved. The chunk budget Python passes is
//! handed to the core as it is; everything derived from it is derived there.

use std::path::PathBuf;

use lazy_disk_cache_core as ldc_core;
use ldc_core::region::{self, BlockPlacement, BlockSource, RegionTarget};
use ldc_core::{
    ArraySpec, CacheDir, ChunkBudget, CommitBatch, Digest, FileRange, MappingMode, NpyHeader, PayloadWriter,
    WorkingFileFate,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyTuple};

use crate::buffer::Bytes;
use crate::detach::{ChunkHook, run_detached};
use crate::errors::{PendingPyErr, to_exception, to_py};
use crate::mapping::PyFileMapping;
use crate::region::{PyKeyHolder, PyKeyLock, PyRegion};

/// Names that could not be removed, each with its `OSError`.
type Failures = Vec<(String, Py<PyAny>)>;

/// An open cache directory (see `_rust.pyi`).
#[pyclass(name = "CacheDir", module = "lazy_disk_cache._rust", frozen)]
pub struct PyCacheDir {
    pub(crate) inner: CacheDir,
}

/// A decoded `.npy` header (see `_rust.pyi`).
#[pyclass(name = "NpyHeader", module = "lazy_disk_cache._rust", frozen)]
pub struct PyNpyHeader {
    inner: NpyHeader,
}

/// A group commit of `.npy` + `.meta.json` pairs (see `_rust.pyi`).
#[pyclass(name = "CommitBatch", module = "lazy_disk_cache._rust", frozen)]
pub struct PyCommitBatch {
    inner: CommitBatch,
}

/// The mode a stored payload may be mapped in: `r` or `c`, never shared-writable (a committed
/// payload changes only by a commit). `read_npy` also takes no mode (`None`: nothing mapped).
fn payload_mode(mode: &str) -> PyResult<MappingMode> {
    MappingMode::parse(mode)
        .filter(|mode| *mode != MappingMode::ReadWrite)
        .ok_or_else(|| PyValueError::new_err(format!("map_mode must be 'r' or 'c', not {mode:?}")))
}

/// How Python names what became of a working file.
fn fate_name(fate: WorkingFileFate) -> &'static str {
    match fate {
        WorkingFileFate::Removed => "removed",
        WorkingFileFate::Held => "held",
        WorkingFileFate::Writing => "writing",
        WorkingFileFate::Unpaired => "unpaired",
        WorkingFileFate::Differs => "differs",
        WorkingFileFate::Changed => "changed",
        WorkingFileFate::NotRegular => "not-regular",
        WorkingFileFate::Gone => "gone",
    }
}

/// Where payload bytes come from.
enum Source<'py> {
    One(Bytes),
    Blocks(Bound<'py, PyIterator>),
}

/// Classifies `src` as one buffer or an iterable of buffers and settles the total size.
fn source_of<'py>(src: &Bound<'py, PyAny>, nbytes: Option<u64>) -> PyResult<(Source<'py>, u64)> {
    match Bytes::get(src) {
        Ok(bytes) => {
            let len = bytes.len() as u64;
            match nbytes {
                Some(expected) if expected != len => Err(PyValueError::new_err(format!(
                    "source holds {len} bytes but nbytes is {expected}"
                ))),
                _ => Ok((Source::One(bytes), len)),
            }
        }
        Err(err) if err.is_instance_of::<PyTypeError>(src.py()) => {
            let blocks = src.try_iter().map_err(|_| {
                PyTypeError::new_err(format!(
                    "source must be a bytes-like object or an iterable of them, not {}",
                    src.get_type()
                        .name()
                        .map_or_else(|_| "?".to_owned(), |name| name.to_string())
                ))
            })?;
            let total = nbytes.ok_or_else(|| PyTypeError::new_err("nbytes is required for an iterable source"))?;
            Ok((Source::Blocks(blocks), total))
        }
        Err(err) => Err(err),
    }
}

/// Appends the bytes of one buffer to `writer`, the GIL released.
fn append(
    py: Python<'_>,
    writer: &mut PayloadWriter,
    bytes: &Bytes,
    pending: &PendingPyErr,
    hook: &ChunkHook<'_>,
) -> PyResult<()> {
    let layout = bytes.layout()?;
    pending.to_py(run_detached(py, || {
        let between = &mut hook.between();
        match &layout {
            BlockSource::Contiguous(block) => writer.write_block(block, between),
            BlockSource::Strided(source) => writer.write_gathered(source, between),
        }
    }))
}

/// Writes every block of `source` into `writer`, then reports the bytes not reported yet.
fn feed(
    py: Python<'_>,
    writer: &mut PayloadWriter,
    source: Source<'_>,
    pending: &PendingPyErr,
    hook: &ChunkHook<'_>,
) -> PyResult<()> {
    match source {
        Source::One(bytes) => append(py, writer, &bytes, pending, hook)?,
        Source::Blocks(blocks) => {
            for block in blocks {
                append(py, writer, &Bytes::get(&block?)?, pending, hook)?;
                py.check_signals()?;
                hook.catch_up(py, writer.written())?;
            }
        }
    }
    hook.catch_up(py, writer.written())
}

/// The sidecar of a key: given as bytes, or built by a Python callable from the payload's
/// checksum text (`None` when checksums are switched off).
fn sidecar_bytes(meta: &Bound<'_, PyAny>, digest: Option<Digest>) -> PyResult<Vec<u8>> {
    if let Ok(bytes) = meta.cast::<PyBytes>() {
        return Ok(bytes.as_bytes().to_vec());
    }
    if !meta.is_callable() {
        return Err(PyTypeError::new_err(
            "meta must be bytes or a callable building them from the checksum",
        ));
    }
    let checksum = digest.map(|digest| digest.to_string());
    let built = meta.call1((checksum,))?;
    built
        .cast::<PyBytes>()
        .map(|bytes| bytes.as_bytes().to_vec())
        .map_err(|_| PyTypeError::new_err("the meta callable must return bytes"))
}

#[pymethods]
impl PyCacheDir {
    #[staticmethod]
    #[pyo3(signature = (path, *, create = false))]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts arguments as owned values.
    fn open(py: Python<'_>, path: PathBuf, create: bool) -> PyResult<Self> {
        let inner = to_py(run_detached(py, || CacheDir::open(&path, create)))?;
        Ok(Self { inner })
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.path().to_string_lossy().into_owned()
    }

    #[pyo3(signature = (name, src, *, nbytes = None, chunk_bytes, durable, progress = None))]
    #[allow(clippy::too_many_arguments)] // The signature is the .pyi's.
    fn write_file(
        &self,
        py: Python<'_>,
        name: &str,
        src: &Bound<'_, PyAny>,
        nbytes: Option<u64>,
        chunk_bytes: u64,
        durable: bool,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<PyFileMapping> {
        let budget = ChunkBudget::new(chunk_bytes);
        let (source, total) = source_of(src, nbytes)?;
        let mut writer = to_py(run_detached(py, || {
            self.inner.begin_write(name, total, budget, durable)
        }))?;
        let pending = PendingPyErr::default();
        let hook = ChunkHook::new(&pending, progress);
        feed(py, &mut writer, source, &pending, &hook)?;
        let mapping = to_py(run_detached(py, || self.inner.finish_write(writer)))?;
        Ok(PyFileMapping::new(mapping))
    }

    #[pyo3(signature = (name, nbytes, *, durable))]
    fn write_zeroed(&self, py: Python<'_>, name: &str, nbytes: u64, durable: bool) -> PyResult<PyFileMapping> {
        let mapping = to_py(run_detached(py, || self.inner.write_zeroed(name, nbytes, durable)))?;
        Ok(PyFileMapping::new(mapping))
    }

    #[pyo3(signature = (src, src_offset, dst, length, *, chunk_bytes, durable, patch = None))]
    #[allow(clippy::too_many_arguments)] // The signature is the .pyi's.
    fn copy_range(
        &self,
        py: Python<'_>,
        src: &str,
        src_offset: u64,
        dst: &str,
        length: u64,
        chunk_bytes: u64,
        durable: bool,
        patch: Option<&Bound<'_, PyFileMapping>>,
    ) -> PyResult<PyFileMapping> {
        let source = FileRange {
            name: src,
            offset: src_offset,
            len: length,
        };
        let budget = ChunkBudget::new(chunk_bytes);
        let pending = PendingPyErr::default();
        let hook = ChunkHook::new(&pending, None);
        let patch = patch.map(|patch| patch.get().mapping());
        let mapping = pending.to_py(run_detached(py, || {
            let between = &mut hook.between();
            self.inner
                .replace_with_range(source, patch, dst, durable, budget, between)
        }))?;
        Ok(PyFileMapping::new(mapping))
    }

    fn read_header(&self, py: Python<'_>, name: &str) -> PyResult<PyNpyHeader> {
        let inner = to_py(run_detached(py, || self.inner.read_header(name)))?;
        Ok(PyNpyHeader { inner })
    }

    #[pyo3(signature = (name, *, map_mode = None))]
    fn read_npy(
        &self,
        py: Python<'_>,
        name: &str,
        map_mode: Option<&str>,
    ) -> PyResult<(PyNpyHeader, Option<PyFileMapping>)> {
        let mode = map_mode.map(payload_mode).transpose()?;
        let (inner, mapping) = to_py(run_detached(py, || self.inner.read_npy(name, mode)))?;
        Ok((PyNpyHeader { inner }, mapping.map(PyFileMapping::new)))
    }

    /// The sidecar's bytes and the `.npy` header with its payload mapped, in one call: a store
    /// reload of many small keys pays per crossing. A missing half is `None`; a header that
    /// cannot be read for another reason comes back as its exception, for the caller to raise
    /// after judging the sidecar.
    #[pyo3(signature = (meta_name, npy_name, *, map_mode))]
    #[allow(clippy::type_complexity)] // The tuple is the .pyi's.
    fn read_pair(
        &self,
        py: Python<'_>,
        meta_name: &str,
        npy_name: &str,
        map_mode: &str,
    ) -> PyResult<(
        Option<Py<PyBytes>>,
        Option<(PyNpyHeader, Option<PyFileMapping>)>,
        Option<Py<PyAny>>,
    )> {
        let mode = payload_mode(map_mode)?;
        // A missing sidecar is a miss whatever the .npy holds: the .npy is only opened after it.
        let read = run_detached(py, || {
            self.inner
                .read_file(meta_name)
                .map(|raw| (raw, self.inner.read_npy(npy_name, Some(mode))))
        });
        let (raw, npy) = match read {
            Err(err) if err.is_missing() => return Ok((None, None, None)),
            other => to_py(other)?,
        };
        let raw = Some(PyBytes::new(py, &raw).unbind());
        match npy {
            Ok((inner, mapping)) => Ok((
                raw,
                Some((PyNpyHeader { inner }, mapping.map(PyFileMapping::new))),
                None,
            )),
            Err(err) if err.is_missing() => Ok((raw, None, None)),
            Err(err) => Ok((raw, None, Some(to_exception(py, err)))),
        }
    }

    fn refuses_writes(&self, py: Python<'_>) -> PyResult<bool> {
        // Two system calls, which a network file system may make wait.
        to_py(run_detached(py, || self.inner.refuses_writes()))
    }

    fn read_file<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = to_py(run_detached(py, || self.inner.read_file(name)))?;
        Ok(PyBytes::new(py, &bytes))
    }

    #[pyo3(signature = (name, offset, dest, *, chunk_bytes))]
    fn read_into(
        &self,
        py: Python<'_>,
        name: &str,
        offset: u64,
        dest: &Bound<'_, PyAny>,
        chunk_bytes: u64,
    ) -> PyResult<()> {
        let mut dest = Bytes::get_writable(dest)?;
        let budget = ChunkBudget::new(chunk_bytes);
        let pending = PendingPyErr::default();
        let hook = ChunkHook::new(&pending, None);
        pending.to_py(run_detached(py, || {
            self.inner
                .read_into(name, offset, dest.as_mut_slice(), budget, &mut hook.between())
        }))
    }

    #[pyo3(signature = (name, *, progress = None))]
    fn checksum(&self, py: Python<'_>, name: &str, progress: Option<Py<PyAny>>) -> PyResult<String> {
        let pending = PendingPyErr::default();
        let hook = ChunkHook::new(&pending, progress);
        let (digest, len) = pending.to_py(run_detached(py, || self.inner.checksum_file(name, &mut hook.between())))?;
        hook.catch_up(py, len)?;
        Ok(digest.to_string())
    }

    #[pyo3(signature = (*, chunk_bytes))]
    fn begin_commit(&self, chunk_bytes: u64) -> PyCommitBatch {
        PyCommitBatch {
            inner: CommitBatch::new(&self.inner, ChunkBudget::new(chunk_bytes)),
        }
    }

    #[pyo3(signature = (names = None, *, dry_run = false))]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts arguments as owned values.
    fn sweep_temps(
        &self,
        py: Python<'_>,
        names: Option<Vec<String>>,
        dry_run: bool,
    ) -> PyResult<(Vec<String>, Failures)> {
        if dry_run && names.is_none() {
            return Err(PyValueError::new_err("a dry run needs the candidate names"));
        }
        let report = to_py(run_detached(py, || match &names {
            Some(names) if dry_run => self.inner.sweepable_temps(names),
            Some(names) => self.inner.sweep_named_temps(names),
            None => self.inner.sweep_temps(),
        }))?;
        let failed = report
            .failed
            .into_iter()
            // A directory that is read-only to us is skipped silently.
            .filter(|(_, err)| !err.is_permission_refusal())
            .map(|(name, err)| (name, to_exception(py, err)))
            .collect();
        Ok((report.removed, failed))
    }

    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts arguments as owned values.
    #[pyo3(signature = (names, *, durable = false))]
    fn unlink_all(&self, py: Python<'_>, names: Vec<String>, durable: bool) -> PyResult<Failures> {
        let failed = to_py(run_detached(py, || self.inner.unlink_all(&names, durable)))?;
        Ok(failed
            .into_iter()
            .map(|(name, err)| (name, to_exception(py, err)))
            .collect())
    }

    #[pyo3(signature = (keys, *, dry_run = false))]
    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts arguments as owned values.
    fn collect_working_files(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        dry_run: bool,
    ) -> PyResult<(Vec<(String, &'static str)>, Failures)> {
        let pending = PendingPyErr::default();
        let hook = ChunkHook::new(&pending, None);
        let report = pending.to_py(run_detached(py, || {
            self.inner.collect_working_files(&keys, dry_run, &mut hook.between())
        }))?;
        let mut fates: Vec<(String, &'static str)> = report
            .fates
            .into_iter()
            .map(|(key, fate)| (key, fate_name(fate)))
            .collect();
        let mut failed = Vec::new();
        for (key, err) in report.failed {
            // A directory that is read-only to us cannot be collected; that is no error.
            if err.is_permission_refusal() {
                fates.push((key, "refused"));
            } else {
                failed.push((key, to_exception(py, err)));
            }
        }
        Ok((fates, failed))
    }

    fn hold_key(&self, py: Python<'_>, key: &str) -> PyResult<Option<PyKeyHolder>> {
        let holder = to_py(run_detached(py, || self.inner.hold_key(key)))?;
        Ok(holder.map(PyKeyHolder::new))
    }

    fn lock_key(&self, py: Python<'_>, key: &str) -> PyResult<PyKeyLock> {
        let lock = to_py(run_detached(py, || self.inner.lock_key(key)))?;
        Ok(PyKeyLock::new(lock))
    }

    fn try_lock_key(&self, py: Python<'_>, key: &str) -> PyResult<Option<PyKeyLock>> {
        let lock = to_py(run_detached(py, || self.inner.try_lock_key(key)))?;
        Ok(lock.map(PyKeyLock::new))
    }

    #[pyo3(signature = (key, *, descr, fortran_order, shape, nbytes, nonce))]
    #[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)] // The signature is the .pyi's.
    fn reserve_region(
        &self,
        py: Python<'_>,
        key: &str,
        descr: &str,
        fortran_order: bool,
        shape: Vec<u64>,
        nbytes: u64,
        nonce: u64,
    ) -> PyResult<PyRegion> {
        let spec = ArraySpec {
            descr,
            fortran_order,
            shape: &shape,
        };
        let region = to_py(run_detached(py, || self.inner.reserve_region(key, spec, nbytes, nonce)))?;
        Ok(PyRegion::new(region))
    }

    #[pyo3(signature = (temp, source, *, nonce, data_offset, nbytes, shape, start, extent, itemsize))]
    #[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)] // The signature is the .pyi's.
    fn write_block(
        &self,
        py: Python<'_>,
        temp: &str,
        source: &Bound<'_, PyAny>,
        nonce: u64,
        data_offset: u64,
        nbytes: u64,
        shape: Vec<u64>,
        start: Vec<u64>,
        extent: Vec<u64>,
        itemsize: u64,
    ) -> PyResult<()> {
        let bytes = Bytes::get(source)?;
        let source = bytes.layout()?;
        let target = RegionTarget {
            temp,
            nonce,
            data_offset,
            nbytes,
        };
        let placement = BlockPlacement {
            shape: &shape,
            start: &start,
            extent: &extent,
            itemsize,
        };
        to_py(run_detached(py, || {
            region::write_block(&self.inner, target, placement, &source)
        }))
    }

    fn __repr__(&self) -> String {
        format!("<CacheDir '{}'>", self.inner.path().display())
    }
}

#[pymethods]
impl PyNpyHeader {
    #[getter]
    fn descr(&self) -> &str {
        &self.inner.descr
    }

    #[getter]
    fn fortran_order(&self) -> bool {
        self.inner.fortran_order
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.inner.shape)
    }

    #[getter]
    fn data_offset(&self) -> u64 {
        self.inner.data_offset
    }

    #[getter]
    fn file_len(&self) -> u64 {
        self.inner.file_len
    }

    #[getter]
    fn version(&self) -> (u8, u8) {
        self.inner.version
    }

    fn __repr__(&self) -> String {
        let dims: Vec<String> = self.inner.shape.iter().map(u64::to_string).collect();
        let shape = match dims.as_slice() {
            [only] => format!("({only},)"),
            _ => format!("({})", dims.join(", ")),
        };
        format!(
            "NpyHeader(descr={}, fortran_order={}, shape={shape}, data_offset={}, file_len={}, version={:?})",
            self.inner.descr,
            if self.inner.fortran_order { "True" } else { "False" },
            self.inner.data_offset,
            self.inner.file_len,
            self.inner.version
        )
    }
}

#[pymethods]
impl PyCommitBatch {
    #[pyo3(signature = (
        key, *, descr, fortran_order, shape, nbytes, meta, source = None, source_file = None, source_offset = 0,
        progress = None
    ))]
    #[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)] // The signature is the .pyi's.
    fn add_npy(
        &self,
        py: Python<'_>,
        key: &str,
        descr: &str,
        fortran_order: bool,
        shape: Vec<u64>,
        nbytes: u64,
        meta: &Bound<'_, PyAny>,
        source: Option<&Bound<'_, PyAny>>,
        source_file: Option<&str>,
        source_offset: u64,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<(u64, Option<String>, (u64, u64))> {
        let source = match (source, source_file) {
            (Some(source), None) => Some(source_of(source, Some(nbytes))?.0),
            (None, Some(_)) => None,
            _ => return Err(PyTypeError::new_err("give exactly one of source and source_file")),
        };
        let spec = ArraySpec {
            descr,
            fortran_order,
            shape: &shape,
        };
        let mut writer = to_py(run_detached(py, || self.inner.begin_key(key, spec, nbytes)))?;
        let payload_offset = writer.payload_offset();
        let pending = PendingPyErr::default();
        let hook = ChunkHook::new(&pending, progress);
        match (source, source_file) {
            (Some(source), _) => feed(py, writer.payload(), source, &pending, &hook)?,
            (None, Some(file)) => {
                pending.to_py(run_detached(py, || {
                    writer.payload().copy_from(file, source_offset, &mut hook.between())
                }))?;
                hook.catch_up(py, writer.payload().written())?;
            }
            (None, None) => {}
        }
        // The sidecar records the checksum, known once the payload is written. Dropping
        // `payload` on an error below removes the temp.
        let payload = to_py(run_detached(py, || writer.finish_payload()))?;
        let digest = payload.digest();
        let identity = payload.identity();
        let meta = sidecar_bytes(meta, digest)?;
        to_py(run_detached(py, || self.inner.stage(payload, &meta)))?;
        Ok((payload_offset, digest.map(|digest| digest.to_string()), identity))
    }

    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        to_py(run_detached(py, || self.inner.commit()))
    }

    fn abort(&self, py: Python<'_>) {
        run_detached(py, || self.inner.abort());
    }

    #[getter]
    fn keys(&self) -> Vec<String> {
        self.inner.keys()
    }

    #[getter]
    fn committed(&self) -> Vec<String> {
        self.inner.committed()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) {
        // Leaving the block aborts whether or not it raised; after commit() nothing is left.
        let _ = (exc_type, exc, tb);
        self.abort(py);
    }
}
