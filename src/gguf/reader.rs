//! The GGUF reader: parses and validates a whole file (header, metadata, tensor index, data layout)
//! before handing anything out, then serves tensor bytes zero-copy from the mmap or by `pread`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::cursor::{Ctx, Cursor};
use super::decode::{self, RawTensor, MIN_KV_BYTES, MIN_TENSOR_BYTES};
use super::dtype::GgmlType;
use super::error::GgufError;
use super::metadata::Metadata;
use super::tensor_info::{check_shape, TensorInfo};
use super::value::Value;

pub(crate) const MAGIC: [u8; 4] = *b"GGUF";
/// Metadata key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Alignment when the file does not set one.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Everything `parse` extracts from a GGUF buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub version: u32,
    pub metadata: Metadata,
    /// File order; offsets are absolute.
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
    pub alignment: u64,
}

/// Parse and validate a GGUF file held in memory; `bytes.len()` is taken as the file size.
pub fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor::new(bytes);
    let (version, n_tensors, n_kv) = read_header(&mut c)?;
    check_count("tensor infos", n_tensors, MIN_TENSOR_BYTES, c.remaining())?;
    check_count("key-value pairs", n_kv, MIN_KV_BYTES, c.remaining())?;
    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = alignment_of(&metadata)?;
    check_count("tensor infos", n_tensors, MIN_TENSOR_BYTES, c.remaining())?;
    let raw = read_tensor_infos(&mut c, n_tensors)?;
    let data_offset = align_up(c.offset(), alignment)?;
    let tensors = place_tensors(raw, data_offset, alignment, bytes.len() as u64)?;
    Ok(Parsed {
        version,
        metadata,
        tensors,
        data_offset,
        alignment,
    })
}

fn read_header(c: &mut Cursor<'_>) -> Result<(u32, u64, u64), GgufError> {
    let magic = c.take(4, Ctx::Header("magic"))?;
    if magic != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::BadMagic { found });
    }
    let version = c.u32(Ctx::Header("version"))?;
    if !(2..=3).contains(&version) {
        let big_endian = (2..=3).contains(&version.swap_bytes());
        let hint = if big_endian {
            " (this looks like a big-endian file, which is not supported)"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion { version, hint });
    }
    let n_tensors = c.u64(Ctx::Header("tensor count"))?;
    let n_kv = c.u64(Ctx::Header("key-value count"))?;
    Ok((version, n_tensors, n_kv))
}

/// Refuse a record count that cannot fit in the bytes left, before anything is allocated for it.
fn check_count(what: &'static str, count: u64, min_bytes: u64, have: u64) -> Result<(), GgufError> {
    match count.checked_mul(min_bytes) {
        Some(need) if need <= have => Ok(()),
        _ => Err(GgufError::CountTooLarge {
            what,
            count,
            min_bytes,
            have,
        }),
    }
}

fn read_metadata(c: &mut Cursor<'_>, n_kv: u64) -> Result<Metadata, GgufError> {
    let mut metadata = Metadata::new();
    for index in 0..n_kv {
        let (key, value) = decode::read_kv(c, index)?;
        metadata.insert(key, value)?;
    }
    Ok(metadata)
}

/// The data alignment a file's metadata sets: `general.alignment` as a non-zero power-of-two U32.
pub(crate) fn alignment_of(metadata: &Metadata) -> Result<u64, GgufError> {
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(Value::U32(a)) => Err(GgufError::InvalidAlignment {
            value: u64::from(*a),
        }),
        Some(other) => Err(GgufError::AlignmentType {
            found: other.type_name(),
        }),
    }
}

pub(crate) fn align_up(offset: u64, alignment: u64) -> Result<u64, GgufError> {
    offset
        .checked_next_multiple_of(alignment)
        .ok_or(GgufError::InvalidAlignment { value: alignment })
}

fn read_tensor_infos(c: &mut Cursor<'_>, n_tensors: u64) -> Result<Vec<RawTensor>, GgufError> {
    // check_count bounded n_tensors by the bytes left, so this capacity is bounded by the file size.
    let mut raw = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
    let mut seen: HashSet<String> = HashSet::with_capacity(raw.capacity());
    for index in 0..n_tensors {
        let t = decode::read_tensor_info(c, index)?;
        if !seen.insert(t.name.clone()) {
            return Err(GgufError::DuplicateTensor { name: t.name });
        }
        raw.push(t);
    }
    Ok(raw)
}

/// Resolve types and shapes, then place every tensor: aligned, inside the file, no two overlapping.
fn place_tensors(
    raw: Vec<RawTensor>,
    data_offset: u64,
    alignment: u64,
    file_size: u64,
) -> Result<Vec<TensorInfo>, GgufError> {
    let mut tensors = Vec::with_capacity(raw.len());
    for t in raw {
        let ty = GgmlType::from_id(t.type_id).ok_or_else(|| GgufError::UnknownType {
            tensor: t.name.clone(),
            type_id: t.type_id,
        })?;
        let (n_elems, n_bytes) = check_shape(&t.name, ty, &t.dims)?;
        if !t.rel_offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedOffset {
                tensor: t.name,
                offset: t.rel_offset,
                alignment,
            });
        }
        // u128 cannot overflow here, so the message reports the true range even for hostile offsets.
        let start = u128::from(data_offset) + u128::from(t.rel_offset);
        let end = start + u128::from(n_bytes);
        if end > u128::from(file_size) {
            return Err(GgufError::TensorOutOfBounds {
                tensor: t.name,
                start,
                end,
                file_size,
            });
        }
        let offset = u64::try_from(start).map_err(|_| GgufError::TensorOutOfBounds {
            tensor: t.name.clone(),
            start,
            end,
            file_size,
        })?;
        tensors.push(TensorInfo {
            name: t.name,
            ty,
            dims: t.dims,
            offset,
            n_elems,
            n_bytes,
        });
    }
    check_overlap(&tensors)?;
    Ok(tensors)
}

fn check_overlap(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| (t.offset, t.end()));
    for pair in by_offset.windows(2) {
        if let [a, b] = pair {
            if a.end() > b.offset {
                return Err(GgufError::TensorOverlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                    first_end: a.end(),
                    second_start: b.offset,
                });
            }
        }
    }
    Ok(())
}

/// What a path names, for a message when it is not a regular file.
fn kind_of(t: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() || t.is_char_device() {
        Some("a device")
    } else {
        Some("something else")
    }
}

/// Open `path` for reading only if it is a regular file. Opened non-blocking, so a FIFO put in
/// its place after the check cannot hang the open; the opened file is checked again.
fn open_regular(path: &Path) -> Result<File, GgufError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| GgufError::io(format!("opening {}", path.display()), e);
    let not_file = |kind| GgufError::NotAFile { kind };
    if let Some(kind) = kind_of(std::fs::metadata(path).map_err(io)?.file_type()) {
        return Err(not_file(kind));
    }
    const O_NONBLOCK: i32 = 0o4000; // Linux; no effect on a regular file's reads
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    match kind_of(file.metadata().map_err(io)?.file_type()) {
        Some(kind) => Err(not_file(kind)),
        None => Ok(file),
    }
}

/// An open, fully validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    mmap: Mmap,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_offset: u64,
    alignment: u64,
}

impl GgufFile {
    /// Map the file and parse and validate everything in it.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let file = open_regular(path)?;
        // SAFETY: the map is read-only and private to this process. Another process truncating the
        // file makes later page touches fault (SIGBUS); that is why `tensor_bytes` is for tools only
        // and the load path reads with `read_tensor_at`. Parsing touches only pages present now.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|e| GgufError::io(format!("mapping {}", path.display()), e))?;
        let parsed = parse(&mmap)?;
        let by_name = parsed
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            file,
            mmap,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name,
            data_offset: parsed.data_offset,
            alignment: parsed.alignment,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the file when it was opened.
    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Zero-copy view into the mmap. Only safe from SIGBUS while the file is not truncated;
    /// fine for tools (inspect/convert), not used on the service's load path.
    /// A `TensorInfo` from another file whose range lies outside this one gives an empty slice.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = usize::try_from(t.offset).ok();
        let end = usize::try_from(t.end()).ok();
        match (start, end) {
            (Some(start), Some(end)) => self.mmap.get(start..end).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Ask the kernel to read `[start, start + len)` of the file into the page cache ahead of use
    /// (madvise WILLNEED; touches no page, so a truncated file cannot fault here).
    pub fn prefetch(&self, start: u64, len: u64) {
        let size = self.mmap.len() as u64;
        let start = start.min(size);
        let len = len.min(size - start);
        if let (Ok(s), Ok(l)) = (usize::try_from(start), usize::try_from(len)) {
            let _ = self.mmap.advise_range(memmap2::Advice::WillNeed, s, l);
        }
    }

    /// pread (FileExt::read_exact_at) of the tensor's bytes [start, start+dst.len()) into dst.
    /// A file truncated after open gives an Io error naming the tensor, never SIGBUS.
    pub fn read_tensor_at(
        &self,
        t: &TensorInfo,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), GgufError> {
        let len = dst.len() as u64;
        let out_of_range = || GgufError::ReadOutOfRange {
            tensor: t.name.clone(),
            start,
            len,
            n_bytes: t.n_bytes,
        };
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        if end > t.n_bytes {
            return Err(out_of_range());
        }
        let at = t.offset.checked_add(start).ok_or_else(out_of_range)?;
        self.file.read_exact_at(dst, at).map_err(|e| {
            let context = format!(
                "reading bytes [{start}, {end}) of tensor '{}' (file offset {at}) from {}",
                t.name,
                self.path.display()
            );
            GgufError::io(context, e)
        })
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .field("alignment", &self.alignment)
            .finish()
    }
}
