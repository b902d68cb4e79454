//! The `.npy` header codec: bytes in, values out, and back. No I/O.
//!
//! We write format 1.0 (2.0 when the header length does not fit a u16, 3.0 when the dict is
//! not Latin-1) with the dict padded by spaces so the payload starts at [`NPY_DATA_ALIGN`];
//! a dict too long for that page, or a zero-byte payload, gets the standard 64-byte layout.
//! We read any valid header: formats 1.0, 2.0 and 3.0, any alignment, keys in any order and
//! Python literal syntax. `descr` is returned as its literal text, for Python to evaluate; we
//! never interpret it. Absurdly long headers are refused before they are read.

use std::fmt::Write as _;

use super::literal::{self, LiteralError, Value};
use crate::checked::{to_u64, to_usize};

/// The `.npy` magic string.
pub const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Where we put the payload: one page, so a stored entry can be mapped and reflinked
/// block-aligned, and the largest alignment stock `np.load` accepts (it refuses headers over
/// 10000 bytes by default).
pub const NPY_DATA_ALIGN: u64 = 4096;

/// The alignment the format itself requires of the header end (`ARRAY_ALIGN` in `NumPy`).
pub const NPY_ARRAY_ALIGN: u64 = 64;

/// The longest header we read: far beyond any real dtype description, small enough to read
/// into memory without a second thought.
pub const MAX_HEADER_LEN: u64 = 1 << 20;

/// Bytes before the dict text in format 1.0 (magic, version, u16 length).
pub(crate) const PREAMBLE_V1: u64 = 10;
/// Bytes before the dict text in formats 2.0 and 3.0 (magic, version, u32 length).
const PREAMBLE_V2: u64 = 12;

/// Why bytes are not a `.npy` header we read, or values not one we can write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file does not start with the `.npy` magic.
    #[error("not a .npy file (bad magic)")]
    BadMagic,
    /// The file ends inside the header length field.
    #[error("truncated header length")]
    TruncatedLength,
    /// A format version other than 1.0, 2.0 and 3.0.
    #[error("unsupported format version {major}.{minor}")]
    UnsupportedVersion { major: u8, minor: u8 },
    /// A header length beyond [`MAX_HEADER_LEN`].
    #[error("header length {len} exceeds {MAX_HEADER_LEN}")]
    TooLong { len: u64 },
    /// The header would end past the end of the file.
    #[error("header claims {claimed} bytes but the file holds {file_len}")]
    LongerThanFile { claimed: u64, file_len: u64 },
    /// Fewer header bytes were given than the header length says.
    #[error("truncated header")]
    Truncated,
    /// A format 3.0 dict that is not UTF-8.
    #[error("format 3.0 header is not UTF-8")]
    NotUtf8,
    /// The dict text is not a literal we read.
    #[error(transparent)]
    Syntax(#[from] LiteralError),
    /// `descr` is neither a string nor a list or tuple.
    #[error("'descr' must be a string, list or tuple")]
    BadDescr,
    /// `fortran_order` is not a bool.
    #[error("'fortran_order' must be True or False")]
    BadFortranOrder,
    /// `shape` is not a tuple.
    #[error("'shape' must be a tuple")]
    ShapeNotATuple,
    /// `shape` holds something other than integers.
    #[error("'shape' must hold integers")]
    ShapeNotIntegers,
    /// A negative (or too large) dimension.
    #[error("invalid dimension {0}")]
    BadDimension(i128),
    /// A key other than `descr`, `fortran_order` and `shape`.
    #[error("unexpected key {0}")]
    UnexpectedKey(String),
    /// One of the three keys is missing.
    #[error("header must have exactly the keys 'descr', 'fortran_order' and 'shape'")]
    MissingKeys,
    /// A `descr` given for writing that does not read back as one literal.
    #[error("descr {0:?} is not a single Python literal")]
    DescrNotALiteral(String),
    /// A header whose length does not fit the format's length field.
    #[error("header too long")]
    LengthOverflow,
}

/// A decoded `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The literal text of the `descr` value, e.g. `'<f8'` or `[('x', '<f4')]`.
    pub descr: String,
    /// Whether the payload is in Fortran order.
    pub fortran_order: bool,
    /// The array shape.
    pub shape: Vec<u64>,
    /// Byte offset of the payload.
    pub data_offset: u64,
    /// Length of the whole file (as given to the decoder).
    pub file_len: u64,
    /// Format version `(major, minor)`.
    pub version: (u8, u8),
}

/// The fixed-size start of a header: version and where the dict ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Format version.
    pub version: (u8, u8),
    /// Length of magic + version + length field.
    pub prefix_len: u64,
    /// Length of the dict text (`HEADER_LEN`).
    pub header_len: u64,
}

impl Preamble {
    /// Offset of the payload.
    pub fn data_offset(&self) -> u64 {
        self.prefix_len + self.header_len
    }

    /// The payload offset, checked against the length of the file: the one place a header
    /// claiming more bytes than its file holds is refused.
    ///
    /// # Errors
    /// [`HeaderError::LongerThanFile`].
    pub fn data_offset_within(&self, file_len: u64) -> Result<u64, HeaderError> {
        let claimed = self.data_offset();
        if claimed > file_len {
            return Err(HeaderError::LongerThanFile { claimed, file_len });
        }
        Ok(claimed)
    }
}

/// Decodes the magic, version and header length.
///
/// # Errors
/// [`HeaderError`] for a wrong magic, an unknown version, a truncated preamble or a header
/// longer than [`MAX_HEADER_LEN`].
pub fn parse_preamble(bytes: &[u8]) -> Result<Preamble, HeaderError> {
    if bytes.len() < 8 || !bytes.starts_with(NPY_MAGIC) {
        return Err(HeaderError::BadMagic);
    }
    let version = (bytes[6], bytes[7]);
    let (prefix_len, header_len) = match version {
        (1, 0) => match bytes.get(8..10) {
            Some(&[lo, hi]) => (PREAMBLE_V1, u64::from(u16::from_le_bytes([lo, hi]))),
            _ => return Err(HeaderError::TruncatedLength),
        },
        (2 | 3, 0) => match bytes.get(8..12) {
            Some(&[a, b, c, d]) => (PREAMBLE_V2, u64::from(u32::from_le_bytes([a, b, c, d]))),
            _ => return Err(HeaderError::TruncatedLength),
        },
        (major, minor) => return Err(HeaderError::UnsupportedVersion { major, minor }),
    };
    if header_len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong { len: header_len });
    }
    Ok(Preamble {
        version,
        prefix_len,
        header_len,
    })
}

/// Decodes a whole header from `bytes` (which hold at least the preamble and the dict).
///
/// # Errors
/// [`HeaderError`] for any malformed header, or one whose payload offset is past `file_len`.
pub fn decode_header(bytes: &[u8], file_len: u64) -> Result<NpyHeader, HeaderError> {
    let preamble = parse_preamble(bytes)?;
    let data_offset = preamble.data_offset_within(file_len)?;
    let start = to_usize(preamble.prefix_len).map_err(|_| HeaderError::Truncated)?;
    let end = to_usize(data_offset).map_err(|_| HeaderError::Truncated)?;
    // The padding (up to 4 KiB of spaces and a newline) is whitespace the dict may be followed
    // by anyway: leaving it out spares decoding and scanning it.
    let raw = bytes.get(start..end).ok_or(HeaderError::Truncated)?.trim_ascii_end();
    let text: String = match std::str::from_utf8(raw) {
        Ok(text) if preamble.version.0 == 3 || text.is_ascii() => text.to_owned(),
        Err(_) if preamble.version.0 == 3 => return Err(HeaderError::NotUtf8),
        // Versions 1 and 2 are Latin-1, which agrees with UTF-8 on ASCII only.
        _ => raw.iter().map(|&byte| char::from(byte)).collect(),
    };
    let dict = HeaderDict::parse(&text)?;
    Ok(NpyHeader {
        descr: dict.descr,
        fortran_order: dict.fortran_order,
        shape: dict.shape,
        data_offset,
        file_len,
        version: preamble.version,
    })
}

/// The three values of a header dict.
#[derive(Debug)]
struct HeaderDict {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

impl HeaderDict {
    /// Reads the dict text of a header: exactly the keys `descr`, `fortran_order`, `shape`.
    fn parse(text: &str) -> Result<Self, HeaderError> {
        let mut descr: Option<String> = None;
        let mut fortran_order: Option<bool> = None;
        let mut shape: Option<Vec<u64>> = None;
        for item in literal::parse_dict(text)? {
            match item.key {
                Value::Str(key) if key == "descr" => {
                    if !matches!(item.value, Value::Str(_) | Value::List(_) | Value::Tuple(_)) {
                        return Err(HeaderError::BadDescr);
                    }
                    descr = Some(text.get(item.value_text).unwrap_or_default().trim().to_owned());
                }
                Value::Str(key) if key == "fortran_order" => match item.value {
                    Value::Bool(flag) => fortran_order = Some(flag),
                    _ => return Err(HeaderError::BadFortranOrder),
                },
                Value::Str(key) if key == "shape" => shape = Some(shape_of(item.value)?),
                other => return Err(HeaderError::UnexpectedKey(format!("{other:?}"))),
            }
        }
        match (descr, fortran_order, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(Self {
                descr,
                fortran_order,
                shape,
            }),
            _ => Err(HeaderError::MissingKeys),
        }
    }
}

fn shape_of(value: Value) -> Result<Vec<u64>, HeaderError> {
    let Value::Tuple(items) = value else {
        return Err(HeaderError::ShapeNotATuple);
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Int(dim) => u64::try_from(dim).map_err(|_| HeaderError::BadDimension(dim)),
            _ => Err(HeaderError::ShapeNotIntegers),
        })
        .collect()
}

/// The dict text `NumPy` would write for these values.
pub(crate) fn dict_text(descr: &str, fortran_order: bool, shape: &[u64]) -> String {
    let mut shape_text = String::from("(");
    for (index, dim) in shape.iter().enumerate() {
        if index > 0 {
            shape_text.push_str(", ");
        }
        let _ = write!(shape_text, "{dim}");
    }
    if shape.len() == 1 {
        shape_text.push(',');
    }
    shape_text.push(')');
    let order = if fortran_order { "True" } else { "False" };
    format!("{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape_text}, }}")
}

fn round_up(value: u64, align: u64) -> Result<u64, HeaderError> {
    value.checked_next_multiple_of(align).ok_or(HeaderError::LengthOverflow)
}

/// Encodes a header for a payload of `payload_len` bytes; `descr` is a Python literal.
///
/// # Errors
/// [`HeaderError`] when `descr` is not a literal we can read back, or the header is too long.
pub fn encode_header(
    descr: &str,
    fortran_order: bool,
    shape: &[u64],
    payload_len: u64,
) -> Result<Vec<u8>, HeaderError> {
    let text = dict_text(descr, fortran_order, shape);
    let parsed = HeaderDict::parse(&text)?;
    if parsed.descr != descr.trim() || parsed.shape != shape {
        return Err(HeaderError::DescrNotALiteral(descr.to_owned()));
    }
    let latin1: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
    let (major, dict_bytes) = match latin1 {
        Some(bytes) => (1u8, bytes),
        None => (3u8, text.into_bytes()),
    };
    let dict_len = to_u64(dict_bytes.len());
    let with_newline = |prefix: u64| {
        prefix
            .checked_add(dict_len)
            .and_then(|n| n.checked_add(1))
            .ok_or(HeaderError::LengthOverflow)
    };
    let mut prefix = if major == 1 { PREAMBLE_V1 } else { PREAMBLE_V2 };
    let needed = with_newline(prefix)?;
    let mut total = if payload_len > 0 && needed <= NPY_DATA_ALIGN {
        NPY_DATA_ALIGN
    } else {
        round_up(needed, NPY_ARRAY_ALIGN)?
    };
    let mut version = (major, 0u8);
    if major == 1 && total - prefix > u64::from(u16::MAX) {
        prefix = PREAMBLE_V2;
        version = (2, 0);
        total = round_up(with_newline(prefix)?, NPY_ARRAY_ALIGN)?;
    }
    let header_len = total - prefix;
    if header_len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong { len: header_len });
    }
    let mut out = Vec::with_capacity(to_usize(total).map_err(|_| HeaderError::LengthOverflow)?);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[version.0, version.1]);
    if prefix == PREAMBLE_V1 {
        let len = u16::try_from(header_len).map_err(|_| HeaderError::LengthOverflow)?;
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        let len = u32::try_from(header_len).map_err(|_| HeaderError::LengthOverflow)?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&dict_bytes);
    out.resize(to_usize(total - 1).map_err(|_| HeaderError::LengthOverflow)?, b' ');
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A `'aaa…'` string descr whose format 1.0 header needs exactly `needed` bytes including
    /// the newline (shape `(1,)`, C order).
    fn descr_needing(needed: u64) -> String {
        let base = to_u64(dict_text("''", false, &[1]).len()) + PREAMBLE_V1 + 1;
        let filler = to_usize(needed - base).unwrap();
        format!("'{}'", "a".repeat(filler))
    }

    fn header_len_v1(encoded: &[u8]) -> u64 {
        u64::from(u16::from_le_bytes([encoded[8], encoded[9]]))
    }

    #[test]
    fn shape_text_spells_0_d_1_tuple_and_n_d_like_python() {
        let cases: [(&[u64], &str); 4] = [
            (&[], "()"),
            (&[7], "(7,)"),
            (&[2, 3], "(2, 3)"),
            (&[0, 1, 2], "(0, 1, 2)"),
        ];
        for (shape, text) in cases {
            let dict = dict_text("'<f8'", false, shape);
            assert_eq!(
                dict,
                format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {text}, }}"),
                "{shape:?}"
            );
        }
        assert!(dict_text("'<f8'", true, &[1]).contains("'fortran_order': True"));
    }

    #[test]
    fn zero_d_and_one_tuple_shapes_survive_an_encode_decode_round_trip() {
        for shape in [&[][..], &[1][..], &[12345][..]] {
            let encoded = encode_header("'<i2'", false, shape, 2).unwrap();
            let header = decode_header(&encoded, NPY_DATA_ALIGN + 2).unwrap();
            assert_eq!(header.shape, shape);
        }
    }

    #[test]
    fn padding_lands_data_at_4096_even_when_the_dict_fills_the_page_exactly() {
        let descr = descr_needing(NPY_DATA_ALIGN);

        let encoded = encode_header(&descr, false, &[1], 8).unwrap();

        assert_eq!(to_u64(encoded.len()), NPY_DATA_ALIGN);
        assert_eq!(header_len_v1(&encoded), NPY_DATA_ALIGN - PREAMBLE_V1);
        assert_eq!(encoded[encoded.len() - 2], b'}', "no room left for padding");
        assert_eq!(encoded.last(), Some(&b'\n'));
    }

    #[test]
    fn padding_is_spaces_between_the_dict_and_the_final_newline() {
        let encoded = encode_header("'<f8'", false, &[4], 32).unwrap();
        let dict = dict_text("'<f8'", false, &[4]);
        let dict_end = 10 + dict.len();

        assert_eq!(&encoded[10..dict_end], dict.as_bytes());
        assert!(encoded[dict_end..encoded.len() - 1].iter().all(|&byte| byte == b' '));
        assert_eq!(encoded.last(), Some(&b'\n'));
    }

    #[test]
    fn one_byte_past_the_page_falls_back_to_64_byte_alignment() {
        let descr = descr_needing(NPY_DATA_ALIGN + 1);

        let encoded = encode_header(&descr, false, &[1], 8).unwrap();

        assert_eq!(to_u64(encoded.len()), NPY_DATA_ALIGN + NPY_ARRAY_ALIGN);
        let header = decode_header(&encoded, to_u64(encoded.len()) + 8).unwrap();
        assert_eq!(header.descr, descr);
    }

    #[test]
    fn zero_byte_payload_gets_64_byte_alignment_instead_of_a_page() {
        for needed in [11 + 64, 1000, NPY_DATA_ALIGN - 1] {
            let descr = descr_needing(needed);

            let encoded = encode_header(&descr, false, &[1], 0).unwrap();

            assert_eq!(
                to_u64(encoded.len()),
                needed.next_multiple_of(NPY_ARRAY_ALIGN),
                "{needed}"
            );
            let header = decode_header(&encoded, to_u64(encoded.len())).unwrap();
            assert_eq!(header.data_offset, to_u64(encoded.len()));
        }
    }

    #[test]
    fn non_latin1_header_uses_a_four_byte_length_and_still_lands_data_at_4096() {
        let encoded = encode_header("[('θ', '<f4')]", false, &[3], 12).unwrap();

        assert_eq!(to_u64(encoded.len()), NPY_DATA_ALIGN);
        let header_len = u32::from_le_bytes([encoded[8], encoded[9], encoded[10], encoded[11]]);
        assert_eq!(u64::from(header_len), NPY_DATA_ALIGN - PREAMBLE_V2);
    }

    #[test]
    fn latin1_beyond_ascii_stays_format_1_as_latin1_bytes() {
        let encoded = encode_header("[('é', '<f4')]", false, &[3], 12).unwrap();

        assert_eq!(&encoded[6..8], b"\x01\x00");
        assert!(encoded.windows(3).any(|window| window == b"'\xe9'"));
        let header = decode_header(&encoded, NPY_DATA_ALIGN + 12).unwrap();
        assert_eq!(header.descr, "[('é', '<f4')]");
    }

    #[test]
    fn header_too_long_to_read_back_is_refused_when_encoding() {
        let descr = format!("'{}'", "a".repeat(usize::try_from(MAX_HEADER_LEN).unwrap()));

        let err = encode_header(&descr, false, &[1], 8).unwrap_err();

        assert!(matches!(err, HeaderError::TooLong { .. }), "{err}");
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn parenthesised_int_is_not_a_tuple_shape() {
        let text = "{'descr': '<f8', 'fortran_order': False, 'shape': (5), }";

        let err = HeaderDict::parse(text).unwrap_err().to_string();

        assert!(err.contains("tuple"), "{err}");
        assert_eq!(
            HeaderDict::parse("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }")
                .unwrap()
                .shape,
            [5]
        );
    }

    #[test]
    fn hostile_nesting_is_refused_without_deep_recursion() {
        let deep = format!("{}'<f8'{}", "[".repeat(10_000), "]".repeat(10_000));
        let text = format!("{{'descr': {deep}, 'fortran_order': False, 'shape': (1,), }}");

        let err = HeaderDict::parse(&text).unwrap_err().to_string();

        assert!(err.contains("nested too deeply"), "{err}");
    }

    #[test]
    fn descr_text_is_kept_verbatim_for_python_to_evaluate() {
        let descr = "[('x', '<f8', (2, 3)), ('name', '<U5')]";
        let text = format!("{{'descr':   {descr}  , 'fortran_order': False, 'shape': (1,), }}");

        assert_eq!(HeaderDict::parse(&text).unwrap().descr, descr);
    }

    #[test]
    fn duplicate_keys_do_not_count_as_the_missing_ones() {
        let text = "{'descr': '<f8', 'descr': '<f4', 'shape': (1,), }";

        let err = HeaderDict::parse(text).unwrap_err().to_string();

        assert!(err.contains("exactly the keys"), "{err}");
    }
}
