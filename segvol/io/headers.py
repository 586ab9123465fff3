"""Image headers checked against the files themselves, before any reader trusts them.

Every reader of `segvol.io` (NIfTI, MetaImage, NRRD, DICOM series, M3D `.npy`) calls one of the
`check_*` functions below before nibabel, SimpleITK or numpy opens the file, so that `segvol
predict`, `segvol normalize` and `segvol serve` (open and upload) all get the same checks:

- **Detached data stays next to its header.** A MetaImage `ElementDataFile` or an NRRD `data file`
  (single name, `LIST` or a numbered pattern, several files) must be a relative name inside the
  header's own folder: no absolute path, no `..`, no symbolic link that leads out of the folder,
  and a regular file (not `/dev/zero`, a pipe or a folder). ITK would follow any of them.
- **The claimed size must be in the file.** The voxels a header claims (dimensions x bytes per
  voxel) must fit the bytes actually there: the file (or data files) for raw data; for gzip/zlib
  data at most 1032 x the compressed bytes (deflate's largest possible ratio), then the gzip
  trailer or, where that cannot prove it, a streaming count of the decompressed bytes (constant
  memory, stops at the claimed size); for DICOM the pixel bytes of every file of the series.
  nibabel and ITK allocate the claimed volume before reading it, so a 62-byte file claiming
  600 MB would otherwise cost 600 MB, and a NIfTI-2 header claiming 100000^3 a `MemoryError`.
- **A voxel cap**: at most `max_voxels()` voxels per image, 2^31 by default (a 1024 x 1024 x 2048
  CT is 2^31; the released SegVol's largest inputs are far below), raised or lowered with the
  environment variable `SEGVOL_MAX_VOXELS`.

Why our own parsing: the libraries trust the header by design (they read it to know what to
allocate), and ITK resolves detached data files itself; nothing in SimpleITK or nibabel offers a
"check only" mode that does not open the data. The parsers here read only what the checks need
and refuse what they cannot judge.

Each failure is a one-line ValueError naming the file and the problem.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_VOXELS = 2**31
MAX_VOXELS_VARIABLE = "SEGVOL_MAX_VOXELS"
# Deflate (gzip, zlib) cannot expand its input more than ~1032-fold (RFC 1951: a 258-byte match
# costs at least 2 bits); multi-member files and headers only lower the ratio.
DEFLATE_MAX_RATIO = 1032
# Compressed DICOM (JPEG, JPEG-LS, JPEG 2000, RLE): pixel bytes per byte of file, summed over the series.
DICOM_MAX_RATIO = 1000
HEADER_LIMIT = 16 << 20  # bytes of a MetaImage/NRRD header (file-name lists included) we read at most
MAX_DATA_FILES = 100_000
_COUNT_CHUNK = 1 << 20


def max_voxels() -> int:
    """The voxel cap: `SEGVOL_MAX_VOXELS` when set (a positive integer), else 2^31."""
    text = os.environ.get(MAX_VOXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{MAX_VOXELS_VARIABLE}={text!r}: expected a positive integer number of voxels") from None
    if value < 1:
        raise ValueError(f"{MAX_VOXELS_VARIABLE}={text!r}: expected a positive integer number of voxels")
    return value


def check_voxel_count(path, shape, what: str = "its header") -> int:
    """The number of voxels of `shape` (Python ints, no overflow); ValueError when a size is not
    positive or the count is over `max_voxels()`."""
    sizes = [int(n) for n in shape]
    if any(n < 1 for n in sizes):
        raise ValueError(f"{path}: {what} claims a volume of shape {tuple(sizes)} (sizes must be at least 1)")
    count = math.prod(sizes)
    limit = max_voxels()
    if count > limit:
        raise ValueError(
            f"{path}: {what} claims {'x'.join(map(str, sizes))} = {count:,} voxels, over the limit of {limit:,} "
            f"(set {MAX_VOXELS_VARIABLE} to read larger images)"
        )
    return count


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB" if n >= 2**20 else f"{n} bytes"


# ----------------------------------------------------------------------------- compressed streams


@dataclass
class _Region:
    """`length` bytes of `path` from `offset` (None: to the end of the file)."""

    path: Path
    offset: int = 0
    length: int | None = None

    def size(self) -> int:
        total = self.path.stat().st_size - self.offset
        return max(0, total if self.length is None else min(self.length, total))

    def chunks(self):
        left = self.size()
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            while left > 0:
                block = handle.read(min(_COUNT_CHUNK, left))
                if not block:
                    return
                left -= len(block)
                yield block


def _gzip_trailer_size(region: _Region) -> int:
    """ISIZE of the last gzip member in `region` (its decompressed size mod 2^32), 0 if unreadable."""
    if region.size() < 18:
        return 0
    end = region.offset + region.size()
    with open(region.path, "rb") as handle:
        handle.seek(end - 4)
        return struct.unpack("<I", handle.read(4))[0]


def _inflated_size_reaches(regions: list[_Region], needed: int, multi_member: bool) -> bool:
    """Whether the deflate data of `regions` (each a zlib or gzip stream; gzip files may hold several
    members) decompresses to at least `needed` bytes. Reads 1 MiB blocks, keeps at most 1 MiB of
    output and stops as soon as the count is reached. Raises zlib.error on corrupt data."""
    total = 0
    for region in regions:
        decompressor = zlib.decompressobj(47)  # zlib or gzip header, detected
        for block in region.chunks():
            data = block
            while data:
                if decompressor.eof:
                    if not multi_member or not data.strip(b"\0"):
                        data = b""  # the stream ended (trailing zero padding is allowed)
                        break
                    decompressor = zlib.decompressobj(47)
                total += len(decompressor.decompress(data, _COUNT_CHUNK))
                if total >= needed:
                    return True
                data = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
            if decompressor.eof and not multi_member:
                break
        total += len(decompressor.flush())
    return total >= needed


def _check_compressed(path, regions: list[_Region], needed: int, kind: str) -> None:
    """`needed` decompressed bytes must be in the compressed `regions` (see the module docstring)."""
    packed = sum(region.size() for region in regions)
    if kind in ("gzip", "zlib") and needed > DEFLATE_MAX_RATIO * packed:
        raise ValueError(
            f"{path}: the header claims {_gib(needed)} of voxel data but the {_gib(packed)} of {kind} data "
            f"cannot hold more than {_gib(DEFLATE_MAX_RATIO * packed)}; truncated file or forged header"
        )
    if kind == "gzip" and sum(_gzip_trailer_size(region) for region in regions) >= needed:
        return  # each member's size is at least its trailer's ISIZE
    try:
        enough = _inflated_size_reaches(regions, needed, multi_member=kind == "gzip")
    except (zlib.error, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: corrupt {kind} data ({error})") from None
    if not enough:
        raise ValueError(
            f"{path}: the header claims {_gib(needed)} of voxel data but the {kind} data holds less; "
            "truncated file or forged header"
        )


# ----------------------------------------------------------------------------- detached data files


def contained_data_file(header: Path, name: str, what: str = "data file") -> Path:
    """The detached data file `name` of `header`, refused unless it is a relative name that
    resolves (symbolic links followed) to a regular file inside the header's folder."""
    name = name.strip()
    if not name:
        raise ValueError(f"{header}: empty {what} name")
    parts = re.split(r"[/\\]", name)
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(
            f"{header}: {what} {name!r} is an absolute path; detached data must lie next to its header "
            "(a relative name in the same folder)"
        )
    if ".." in parts:
        raise ValueError(
            f"{header}: {what} {name!r} leaves the header's folder ('..'); detached data must lie next to its header"
        )
    folder = header.parent.resolve()
    candidate = (header.parent / name).resolve()
    if candidate != folder and folder not in candidate.parents:
        raise ValueError(
            f"{header}: {what} {name!r} leads out of the header's folder (a symbolic link to "
            f"somewhere else); detached data must lie next to its header"
        )
    try:
        mode = candidate.stat().st_mode
    except OSError:
        raise ValueError(f"{header}: {what} {name!r} does not exist next to the header") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{header}: {what} {name!r} is not a regular file")
    return candidate


def _pattern_names(header: Path, pattern: str, first: int, last: int, step: int) -> list[str]:
    """File names of a printf-style numbered pattern (`slice%03d.raw 1 100 1`)."""
    if not re.fullmatch(r"[^%]*%[-+ 0#]*\d*[diu][^%]*", pattern.replace("%%", "")):
        raise ValueError(f"{header}: unsupported data file pattern {pattern!r} (one %d-style number expected)")
    if step == 0:
        raise ValueError(f"{header}: data file pattern {pattern!r} has step 0")
    numbers = range(first, last + (1 if step > 0 else -1), step)
    if len(numbers) > MAX_DATA_FILES:
        raise ValueError(f"{header}: data file pattern names {len(numbers):,} files (at most {MAX_DATA_FILES:,})")
    python_pattern = re.sub(r"%([-+ 0#]*\d*)u", r"%\1d", pattern)
    return [python_pattern % number for number in numbers]


class _NeedMore(Exception):
    """The header did not end within the bytes read so far."""


def _parse_header(path: Path, parse):
    """`parse(data, complete)` on the file's first 1 MiB, again on its first HEADER_LIMIT bytes if
    that raised _NeedMore (long file-name lists); `complete`: `data` is the whole file."""
    for limit in (1 << 20, HEADER_LIMIT):
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit)
                complete = not handle.read(1)
        except OSError as error:
            raise ValueError(f"{path}: cannot read the header ({error.strerror or error})") from None
        try:
            return parse(data, complete)
        except _NeedMore:
            if complete:
                break
    raise ValueError(f"{path}: no complete image header in its first {_gib(HEADER_LIMIT)}")


def _lines_with_offsets(data: bytes):
    """(line without its end, offset just after its end) for each line of `data`."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            yield data[start:], len(data)
            return
        yield data[start:end].rstrip(b"\r"), end + 1
        start = end + 1


# ----------------------------------------------------------------------------- MetaImage

METAIMAGE_TYPES = {  # MetaIO's MET_ValueTypeSize
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_ASCII_CHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def _words_to_ints(path, key: str, value: str) -> list[int]:
    try:
        return [int(float(word)) for word in value.split()]
    except ValueError:
        raise ValueError(f"{path}: MetaImage {key} {value!r} is not a list of numbers") from None


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "t", "1", "yes")


def _metaimage_header(path: Path, data: bytes, complete: bool):
    """(fields by lower-case key, ElementDataFile value, offset after its line, LIST names or None)."""
    fields: dict[str, str] = {}
    for raw, after in _lines_with_offsets(data):
        line = raw.decode("latin-1").strip()
        if not line:
            continue
        match = re.match(r"([^=:]*)[=:](.*)$", line)
        if not match:
            raise ValueError(f"{path}: not a MetaImage header (line {line[:60]!r} is not 'Key = value')")
        key, value = match.group(1).strip(), match.group(2).strip()
        if key.lower() == "elementdatafile":
            if key != "ElementDataFile":
                raise ValueError(f"{path}: MetaImage key {key!r} is misspelt (ElementDataFile)")
            if "LIST" in value:  # MetaIO: any name holding LIST; then one file name per line
                if not complete:
                    raise _NeedMore
                names = [line.decode("latin-1").strip() for line, _ in _lines_with_offsets(data[after:])]
                return fields, value, after, [name for name in names if name]
            return fields, value, after, None
        if key.lower() in fields:
            raise ValueError(f"{path}: MetaImage key {key!r} is given twice")
        fields[key.lower()] = value
    if not complete:
        raise _NeedMore
    raise ValueError(f"{path}: not a MetaImage header (no ElementDataFile line)")


def check_metaimage(path: str | os.PathLike) -> None:
    """Check a MetaImage (`.mha`, `.mhd`) header, its detached data files and its data size."""
    path = Path(path)
    fields, data_file, data_offset, names = _parse_header(
        path, lambda data, complete: _metaimage_header(path, data, complete)
    )
    dims = _words_to_ints(path, "DimSize", fields.get("dimsize", ""))
    ndims = _words_to_ints(path, "NDims", fields.get("ndims", str(len(dims))))
    if not dims or ndims != [len(dims)]:
        raise ValueError(f"{path}: MetaImage NDims {fields.get('ndims')!r} does not match DimSize {dims}")
    element_type = fields.get("elementtype", "").upper()
    if element_type.removesuffix("_ARRAY") not in METAIMAGE_TYPES:
        raise ValueError(f"{path}: MetaImage ElementType {fields.get('elementtype')!r} is not supported")
    channels = _words_to_ints(path, "ElementNumberOfChannels", fields.get("elementnumberofchannels", "1"))
    count = check_voxel_count(path, dims)
    if len(channels) != 1 or not 1 <= channels[0] <= 1024:
        raise ValueError(f"{path}: MetaImage ElementNumberOfChannels {fields.get('elementnumberofchannels')!r}")
    needed = count * channels[0] * METAIMAGE_TYPES[element_type.removesuffix("_ARRAY")]
    skip = _words_to_ints(path, "HeaderSize", fields.get("headersize", "0"))[:1] or [0]
    skip = skip[0]

    if data_file.lower() == "local":
        regions = [_Region(path, data_offset)]
    elif names is not None:
        if "%" in data_file:
            raise ValueError(f"{path}: ElementDataFile {data_file!r} is both a LIST and a pattern")
        if not names or len(names) > MAX_DATA_FILES:
            raise ValueError(f"{path}: ElementDataFile LIST names {len(names)} files")
        regions = [_Region(contained_data_file(path, name)) for name in names]
    elif "%" in data_file:
        words = data_file.split()
        numbers = _words_to_ints(path, "ElementDataFile", " ".join(words[1:4]))
        first = numbers[0] if numbers else 1
        last = numbers[1] if len(numbers) > 1 else first + dims[-1] - 1
        step = numbers[2] if len(numbers) > 2 else 1
        names = _pattern_names(path, words[0], first, last, step)
        regions = [_Region(contained_data_file(path, name)) for name in names]
    else:
        regions = [_Region(contained_data_file(path, data_file))]

    if skip > 0:
        regions = [_Region(region.path, region.offset + skip) for region in regions]
    if _true(fields.get("compresseddata", "false")):
        if len(regions) > 1:
            raise ValueError(f"{path}: compressed MetaImage data in several files is not supported")
        declared = _words_to_ints(path, "CompressedDataSize", fields.get("compresseddatasize", "-1"))[:1]
        if declared and declared[0] > 0:
            regions = [_Region(regions[0].path, regions[0].offset, declared[0])]
        _check_compressed(path, regions, needed, "zlib")
        return
    available = sum(region.size() for region in regions)
    if fields.get("binarydata", "true").strip().lower() in ("false", "f", "0", "no"):
        needed = 2 * count * channels[0] - 1  # ASCII: at least one digit and one separator per value
    if available < needed:
        raise ValueError(
            f"{path}: the header claims {'x'.join(map(str, dims))} {element_type} ({_gib(needed)}) but the data "
            f"holds {_gib(available)}; truncated file or forged header"
        )


# ----------------------------------------------------------------------------- NRRD

NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: (
        "short",
        "short int",
        "signed short",
        "signed short int",
        "int16",
        "int16_t",
        "ushort",
        "unsigned short",
        "unsigned short int",
        "uint16",
        "uint16_t",
    ),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: (
        "longlong",
        "long long",
        "long long int",
        "signed long long",
        "signed long long int",
        "int64",
        "int64_t",
        "ulonglong",
        "unsigned long long",
        "unsigned long long int",
        "uint64",
        "uint64_t",
        "double",
    ),
}
NRRD_TYPE_SIZE = {name: size for size, names in NRRD_TYPES.items() for name in names}
NRRD_ENCODINGS = {
    "raw": "raw",
    "txt": "text",
    "text": "text",
    "ascii": "text",
    "hex": "hex",
    "gz": "gzip",
    "gzip": "gzip",
}


def _nrrd_header(path: Path, data: bytes, complete: bool):
    """(fields by lower-case name without spaces, offset of attached data or None, LIST names or None)."""
    lines = list(_lines_with_offsets(data))
    if not lines or not lines[0][0].startswith(b"NRRD000"):
        raise ValueError(f"{path}: not a NRRD file (it does not start with 'NRRD000x')")
    fields: dict[str, str] = {}
    for index, (raw, after) in enumerate(lines[1:], start=1):
        line = raw.decode("latin-1")
        if not line.strip():
            return fields, after, None  # attached data starts after the blank line
        if line.startswith("#"):
            continue
        key, separator, value = line.partition(":")
        if not separator:
            raise ValueError(f"{path}: not a NRRD header (line {line[:60]!r} is not 'field: value')")
        if value.startswith("="):
            continue  # key:=value pairs are free text
        field = re.sub(r"\s+", "", key).lower()
        if field in fields:
            raise ValueError(f"{path}: NRRD field {key.strip()!r} is given twice")
        fields[field] = value.strip()
        if field == "datafile" and value.strip().startswith("LIST"):  # the rest of the file: one name per line
            if not complete:
                raise _NeedMore
            names = [rest.decode("latin-1").strip() for rest, _ in lines[index + 1 :]]
            return fields, None, [name for name in names if name]
    if not complete:
        raise _NeedMore
    return fields, None, None


def check_nrrd(path: str | os.PathLike) -> None:
    """Check a NRRD (`.nrrd`, `.nhdr`) header, its detached data files and its data size."""
    path = Path(path)
    fields, data_offset, list_names = _parse_header(path, lambda data, complete: _nrrd_header(path, data, complete))
    type_name = " ".join(fields.get("type", "").lower().split())
    if type_name not in NRRD_TYPE_SIZE:
        raise ValueError(f"{path}: NRRD type {fields.get('type')!r} is not supported")
    try:
        dimension = int(fields.get("dimension", ""))
        sizes = [int(word) for word in fields.get("sizes", "").split()]
    except ValueError:
        raise ValueError(f"{path}: NRRD dimension/sizes fields are missing or not integers") from None
    if len(sizes) != dimension:
        raise ValueError(f"{path}: NRRD sizes {sizes} do not match dimension {dimension}")
    encoding = NRRD_ENCODINGS.get(fields.get("encoding", "").lower())
    if encoding is None:
        raise ValueError(f"{path}: NRRD encoding {fields.get('encoding')!r} is not supported (raw, ascii, hex, gzip)")
    count = check_voxel_count(path, sizes)
    needed = count * NRRD_TYPE_SIZE[type_name]
    try:
        byte_skip = int(fields.get("byteskip", "0"))
    except ValueError:
        raise ValueError(f"{path}: NRRD byte skip {fields.get('byteskip')!r} is not an integer") from None

    data_file = fields.get("datafile")
    if data_file is None:
        if data_offset is None:
            raise ValueError(f"{path}: NRRD header names no data file and has no attached data")
        regions = [_Region(path, data_offset)]
    elif list_names is not None:
        if not list_names or len(list_names) > MAX_DATA_FILES:
            raise ValueError(f"{path}: NRRD data file LIST names {len(list_names)} files")
        regions = [_Region(contained_data_file(path, name)) for name in list_names]
    else:
        words = data_file.split()
        if "%" in words[0] and len(words) in (4, 5) and all(re.fullmatch(r"[-+]?\d+", w) for w in words[1:]):
            first, last, step = (int(w) for w in words[1:4])
            names = _pattern_names(path, words[0], first, last, step)
        elif "%" in data_file:
            raise ValueError(
                f"{path}: unsupported NRRD data file pattern {data_file!r} "
                "(expected '<format> <min> <max> <step> [<subdim>]')"
            )
        else:
            names = [data_file]
        regions = [_Region(contained_data_file(path, name)) for name in names]
    if byte_skip > 0:
        regions = [_Region(region.path, region.offset + byte_skip) for region in regions]
    elif byte_skip < -1:
        raise ValueError(f"{path}: NRRD byte skip {byte_skip} is not -1 or a byte count")
    if encoding == "gzip":
        _check_compressed(path, regions, needed, "gzip")
        return
    if encoding == "text":
        needed = 2 * count - 1
    elif encoding == "hex":
        needed *= 2
    available = sum(region.size() for region in regions)
    if available < needed:
        raise ValueError(
            f"{path}: the header claims {'x'.join(map(str, sizes))} {type_name} ({_gib(needed)}) but the data holds "
            f"{_gib(available)}; truncated file or forged header"
        )


# ----------------------------------------------------------------------------- NIfTI


def _nifti_header_fields(path: Path, head: bytes) -> tuple[list[int], int, int]:
    """(shape, datatype code, vox_offset) of a NIfTI-1 or NIfTI-2 single-file header."""
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            if head[344:347] != b"n+1":
                raise ValueError(f"{path}: not a single-file NIfTI-1 image (magic {head[344:348]!r}, expected 'n+1')")
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            offset = struct.unpack(endian + "f", head[108:112])[0]
            if not math.isfinite(offset) or offset > 2**62:
                raise ValueError(f"{path}: NIfTI vox_offset {offset} is not a byte offset")
            return _nifti_shape(path, dims), datatype, max(int(offset), 352)
        if size == 540 and len(head) >= 540:
            if head[4:7] != b"n+2":
                raise ValueError(f"{path}: not a single-file NIfTI-2 image (magic {head[4:12]!r}, expected 'n+2')")
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            return _nifti_shape(path, dims), datatype, max(offset, 544)
    raise ValueError(f"{path}: not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")


def _nifti_shape(path: Path, dims) -> list[int]:
    if not 1 <= dims[0] <= 7:
        raise ValueError(f"{path}: NIfTI header has {dims[0]} dimensions (expected 1 to 7)")
    return [int(n) for n in dims[1 : dims[0] + 1]]


def check_nifti(path: str | os.PathLike) -> None:
    """Check a `.nii` / `.nii.gz` header's claimed voxel data against the file (see the module docstring)."""
    from nibabel.nifti1 import data_type_codes

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=handle) as stream:
                    head = stream.read(544)
            else:
                head = handle.read(544)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: cannot read the NIfTI header ({error})") from None
    shape, datatype, offset = _nifti_header_fields(path, head)
    try:
        itemsize = data_type_codes.dtype[datatype].itemsize
    except KeyError:
        raise ValueError(f"{path}: NIfTI datatype code {datatype} is not supported") from None
    count = check_voxel_count(path, shape)
    needed = offset + count * itemsize
    if compressed:
        _check_compressed(path, [_Region(path)], needed, "gzip")
        return
    size = path.stat().st_size
    if size < needed:
        raise ValueError(
            f"{path}: the header claims {'x'.join(map(str, shape))} voxels ({_gib(needed)} with the header) but the "
            f"file holds {_gib(size)}; truncated file or forged header"
        )


# ----------------------------------------------------------------------------- numpy and DICOM


def check_npy(path: str | os.PathLike) -> None:
    """Check a `.npy` header's shape x dtype against the file size (before numpy allocates it)."""
    import numpy as np

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(handle)  # version 3.0 differs from 2.0 only in the header's text encoding
            offset = handle.tell()
    except (ValueError, OSError, SyntaxError) as error:
        raise ValueError(f"{path}: not a plain numpy array: {error}") from None
    count = check_voxel_count(path, shape or [1])
    needed = offset + count * dtype.itemsize
    if path.stat().st_size < needed:
        raise ValueError(
            f"{path}: the header claims {shape} {dtype} ({_gib(needed)}) but the file holds {_gib(path.stat().st_size)}"
        )


NATIVE_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def check_dicom_series(folder: str | os.PathLike, files: list[str]) -> None:
    """Check the pixel data every file of a DICOM series claims (Rows x Columns x frames x samples x
    bits) against the files, before ITK allocates the series volume from the first file's header."""
    import pydicom

    folder = Path(folder)
    claimed, compressed_bytes, compressed_claim, grid = 0, 0, 0, None
    for name in files:
        try:
            dataset = pydicom.dcmread(name, stop_before_pixels=True, force=True, defer_size=1 << 16)
            rows, columns = int(dataset.Rows), int(dataset.Columns)
            frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
            samples = int(getattr(dataset, "SamplesPerPixel", 1) or 1)
            bits = int(dataset.BitsAllocated)
            syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))
        except Exception as error:  # pydicom raises many types for broken files
            raise ValueError(
                f"{folder}: {Path(name).name}: unreadable DICOM header ({type(error).__name__}: {error})"
            ) from None
        if grid is None:
            grid = (rows, columns)
        elif (rows, columns) != grid:
            raise ValueError(
                f"{folder}: {Path(name).name} has {rows}x{columns} pixels, the series' first file "
                f"{grid[0]}x{grid[1]}; slices of one volume must have one size"
            )
        count = check_voxel_count(f"{folder}: {Path(name).name}", [rows, columns, frames, samples])
        nbytes = -(-count * bits // 8)
        size = os.path.getsize(name)
        if syntax in NATIVE_TRANSFER_SYNTAXES:
            if size < nbytes:
                raise ValueError(
                    f"{folder}: {Path(name).name} claims {rows}x{columns}x{frames} pixels "
                    f"({_gib(nbytes)}) but the file holds {_gib(size)}; truncated or forged"
                )
        else:
            compressed_bytes += size
            compressed_claim += nbytes
        claimed += count
    check_voxel_count(folder, [claimed], what="the series")
    if compressed_claim > DICOM_MAX_RATIO * compressed_bytes:
        raise ValueError(
            f"{folder}: compressed DICOM files of {_gib(compressed_bytes)} claim {_gib(compressed_claim)} "
            f"of pixels (over {DICOM_MAX_RATIO}:1); forged headers?"
        )
